"""Knowledge-graph extraction with DSPy through the modelpool pool.

The original app's shape: a `dspy.Signature`, `dspy.Predict` with DSPy's ChatAdapter, and an LM
configured as `dspy.LM("openai/<model>", api_base=<pool>)`. A batch of paragraphs runs in parallel
threads; the pool spreads them over its workers and slots. Nothing here knows about the pool beyond
its URL.

    examples/.venv/bin/python examples/dspy_graph.py [--pool http://127.0.0.1:8000/v1] [--threads 4]
"""

import argparse
import time

import dspy


class ExtractGraph(dspy.Signature):
    """Extract the entities of the paragraph and the relations between them."""

    paragraph: str = dspy.InputField()
    entities: str = dspy.OutputField(desc="the people, places and things, separated by semicolons")
    relations: str = dspy.OutputField(desc="one relation per line, as: subject | relation | object")


# Two worked examples shown to the model before each paragraph: a 135M-parameter model follows the
# output format far more reliably with them (with none, it mostly answers in some other format).
DEMOS = [
    dspy.Example(
        paragraph="Ada Lovelace was born in London. She worked with Charles Babbage on the Analytical Engine.",
        entities="Ada Lovelace; London; Charles Babbage; Analytical Engine",
        relations="Ada Lovelace | born in | London\nAda Lovelace | worked with | Charles Babbage\n"
        "Charles Babbage | designed | Analytical Engine",
    ).with_inputs("paragraph"),
    dspy.Example(
        paragraph="The Nile flows through Egypt. Cairo lies on the Nile.",
        entities="Nile; Egypt; Cairo",
        relations="Nile | flows through | Egypt\nCairo | lies on | Nile",
    ).with_inputs("paragraph"),
]

PARAGRAPHS = [
    "Marie Curie was born in Warsaw. She moved to Paris, where she studied at the University of Paris "
    "and married Pierre Curie.",
    "The Eiffel Tower stands in Paris. It was designed by the company of Gustave Eiffel and opened in 1889.",
    "Alan Turing worked at Bletchley Park during the war. Later he joined the University of Manchester.",
    "The Amazon River flows through Brazil and Peru. It ends in the Atlantic Ocean.",
]


def build_program():
    program = dspy.Predict(ExtractGraph)
    program.demos = list(DEMOS)
    return program


# ChatAdapter asks the model to end its reply with this marker (its parser still reads the fields after it).
COMPLETED_MARKER = "[[ ## completed ## ]]"


def pool_lm(pool, max_tokens=160, stop_at_completed=False):
    """The app's LM on the pool. Greedy and uncached, so every run really goes through the pool.
    max_tokens None leaves DSPy's own default (4000), which the pool serves as llama-server does:
    generation stops where the context ends."""
    options = {} if max_tokens is None else {"max_tokens": max_tokens}
    # A small model often writes the marker and goes on, repeating its fields until max_tokens: a stop
    # sequence (the app's choice, sent with every call, honoured by any OpenAI server) ends the reply
    # there, at the price of a field the model writes only after a marker it put too early.
    if stop_at_completed:
        options["stop"] = [COMPLETED_MARKER]
    return dspy.LM("openai/smollm2", api_base=pool, api_key="unused", temperature=0.0, cache=False, **options)


def configure(pool, max_tokens=160, stop_at_completed=False):
    dspy.configure(lm=pool_lm(pool, max_tokens, stop_at_completed), adapter=dspy.ChatAdapter())


def triples(relations):
    """Edges from lines of `subject | relation | object`, de-duplicated. A small model often adds
    `; more` after the object or writes `subject | relation object`: the first is cut, the second kept
    with an empty object. Anything else it wrote is skipped."""
    out = []
    for line in relations.splitlines():
        parts = [p.strip() for p in line.strip().strip("-*").split("|")]
        if len(parts) == 3:
            parts[2] = parts[2].split(";")[0].strip()
        elif len(parts) == 2:
            parts = [parts[0], parts[1].split(";")[0].strip(), ""]
        else:
            continue
        edge = tuple(parts)
        if edge[0] and edge[1] and edge not in out:
            out.append(edge)
    return out


def render(paragraph, prediction):
    if prediction is None:
        # program.batch gives None where DSPy could not parse the reply (it logs the reply and why).
        return f"paragraph: {paragraph}\n  (DSPy could not parse the model's reply)"
    lines = [f"paragraph: {paragraph}", f"  entities: {prediction.entities}"]
    found = triples(prediction.relations)
    for subject, relation, obj in found:
        lines.append(f"  {subject} --[{relation}]--> {obj}" if obj else f"  {subject} --[{relation}]")
    if not found:
        lines.append(f"  (no relation in the expected form; the model wrote: {prediction.relations!r})")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="http://127.0.0.1:8000/v1", help="the coordinator's OpenAI-compatible API")
    parser.add_argument("--threads", type=int, default=4, help="paragraphs in flight at once")
    parser.add_argument("--max-tokens", type=int, default=160, help="per call; 0 leaves DSPy's default (4000)")
    parser.add_argument(
        "--stop-at-completed", action="store_true", help=f"send {COMPLETED_MARKER!r} as a stop sequence with every call"
    )
    args = parser.parse_args()
    configure(args.pool, args.max_tokens or None, args.stop_at_completed)
    program = build_program()
    examples = [dspy.Example(paragraph=p).with_inputs("paragraph") for p in PARAGRAPHS]
    started = time.monotonic()
    predictions = program.batch(examples, num_threads=args.threads)
    elapsed = time.monotonic() - started
    for example, prediction in zip(examples, predictions):
        print(render(example.paragraph, prediction))
        print()
    print(f"{len(examples)} paragraphs in {elapsed:.1f} s with {args.threads} threads")


if __name__ == "__main__":
    main()
