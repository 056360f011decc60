"""How often DSPy cannot parse the model's answer, with and without constrained decoding.

The knowledge-graph program of dspy_graph.py over 16 paragraphs, once per configuration, through the
pool's OpenAI API:
  - ChatAdapter (DSPy's default: `[[ ## field ## ]]` markers, no response_format; after a reply it cannot
    parse, DSPy retries the call with JSONAdapter, which sends one);
  - JSONAdapter as DSPy sends it for a model litellm does not know: `{"type": "json_object"}`;
  - JSONAdapter told the model takes schemas: `{"type": "json_schema", ...}` built from the signature.
Each with the pool's constrained decoding and without it ("unconstrained": response_format removed
before the request leaves, as a server that ignores it would treat it). A call that still cannot be
parsed raises; the table counts them. Of the replies parsed it also counts the well-formed triples
(`subject | relation | object`, de-duplicated as dspy_graph.py reads them) and of those the grounded
ones, whose subject and object both occur in the paragraph (case aside): a rough check that a setting
which removes failures does not do it by making the extraction worse.

    examples/.venv/bin/python examples/dspy_parse_failures.py [--pool http://127.0.0.1:8000/v1] [--threads 4]
        [--frequency-penalty 0.5]

--frequency-penalty sends OpenAI's frequency_penalty with every call (through dspy.LM's keyword
arguments, which litellm forwards): a token's logit drops by that much per time the reply already has it,
which is aimed at the repetition loops the table's failures come from.
"""

import argparse
import concurrent.futures
import time

import dspy

from dspy_graph import DEMOS, PARAGRAPHS, ExtractGraph, triples

MORE_PARAGRAPHS = [
    "Isaac Newton studied at Trinity College in Cambridge. He wrote the Principia in 1687.",
    "The Rhine rises in the Swiss Alps and flows into the North Sea near Rotterdam.",
    "Frida Kahlo was born in Coyoacan. She married the painter Diego Rivera in 1929.",
    "The Colosseum stands in Rome. It was built under the emperor Vespasian.",
    "Nelson Mandela was born in Mvezo. He became the president of South Africa in 1994.",
    "The Danube flows through Vienna and Budapest before it reaches the Black Sea.",
    "Charles Darwin sailed on the Beagle. He later wrote On the Origin of Species in London.",
    "Mount Kilimanjaro lies in Tanzania. Hans Meyer first climbed it in 1889.",
    "Grace Hopper worked at Harvard on the Mark I computer. She later joined the US Navy.",
    "The Louvre is a museum in Paris. It holds the Mona Lisa by Leonardo da Vinci.",
    "Johannes Gutenberg lived in Mainz. He built a printing press with movable type.",
    "Lake Titicaca lies between Peru and Bolivia. The city of Puno stands on its shore.",
]


class UnconstrainedLM(dspy.LM):
    """Sends everything but response_format: what a server that ignores it would see."""

    def forward(self, prompt=None, messages=None, **kwargs):
        kwargs.pop("response_format", None)
        return super().forward(prompt=prompt, messages=messages, **kwargs)


class SchemaLM(dspy.LM):
    """Says the model takes JSON schemas, so that JSONAdapter sends the signature's schema."""

    @property
    def supports_response_schema(self):
        return True


def run(pool, lm_class, adapter, paragraphs, threads, max_tokens, frequency_penalty):
    penalty = {"frequency_penalty": frequency_penalty} if frequency_penalty else {}
    lm = lm_class("openai/smollm2", api_base=pool, api_key="unused", temperature=0.0, cache=False, max_tokens=max_tokens, **penalty)
    program = dspy.Predict(ExtractGraph)
    program.demos = list(DEMOS)

    def call(paragraph):
        with dspy.context(lm=lm, adapter=adapter):
            try:
                found = triples(program(paragraph=paragraph).relations)
            except Exception as error:  # DSPy raises AdapterParseError (or a subclass) when it cannot parse
                return type(error).__name__, 0, 0
        text = paragraph.lower()
        grounded = [t for t in found if t[2] and t[0].lower() in text and t[2].lower() in text]
        return None, len(found), len(grounded)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool_threads:
        outcomes = list(pool_threads.map(call, paragraphs))
    failures = [kind for kind, _, _ in outcomes if kind is not None]
    found = sum(n for _, n, _ in outcomes)
    grounded = sum(g for _, _, g in outcomes)
    return failures, found, grounded, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--frequency-penalty", type=float, default=0.0, help="OpenAI's frequency_penalty on every call; 0: not sent")
    args = parser.parse_args()
    paragraphs = PARAGRAPHS + MORE_PARAGRAPHS
    configurations = [
        ("ChatAdapter", dspy.ChatAdapter, "unconstrained", UnconstrainedLM),
        ("ChatAdapter", dspy.ChatAdapter, "constrained", dspy.LM),
        ("JSONAdapter (json_object)", dspy.JSONAdapter, "unconstrained", UnconstrainedLM),
        ("JSONAdapter (json_object)", dspy.JSONAdapter, "constrained", dspy.LM),
        ("JSONAdapter (json_schema)", dspy.JSONAdapter, "unconstrained", type("U", (UnconstrainedLM, SchemaLM), {})),
        ("JSONAdapter (json_schema)", dspy.JSONAdapter, "constrained", SchemaLM),
    ]
    penalty = f", frequency_penalty {args.frequency_penalty}" if args.frequency_penalty else ""
    print(f"{len(paragraphs)} paragraphs per row, greedy, max_tokens {args.max_tokens}{penalty}, {args.threads} threads")
    print(f"{'adapter':28} {'decoding':14} {'parse failures':>15} {'triples':>8} {'grounded':>9} {'seconds':>8}")
    for name, adapter_class, decoding, lm_class in configurations:
        failures, found, grounded, seconds = run(
            args.pool, lm_class, adapter_class(), paragraphs, args.threads, args.max_tokens, args.frequency_penalty
        )
        kinds = f"  ({', '.join(sorted(set(failures)))})" if failures else ""
        print(f"{name:28} {decoding:14} {len(failures):>7} of {len(paragraphs):<5} {found:>8} {grounded:>9} {seconds:>8.1f}{kinds}")


if __name__ == "__main__":
    main()
