"""What ending each reply at ChatAdapter's end marker buys: the knowledge-graph program with and without it.

The program of dspy_graph.py over the 16 paragraphs of dspy_parse_failures.py through the pool's OpenAI
API, DSPy's ChatAdapter, greedy, in rounds that alternate between the LM as the app has it and the same LM
sending `[[ ## completed ## ]]` as a stop sequence (dspy_graph.py --stop-at-completed). Each row: wall
time, completion tokens (the pool's usage) and the paragraphs DSPy could not parse (after its own retry
with JSONAdapter).

    examples/.venv/bin/python examples/dspy_stop_at_completed.py [--pool http://127.0.0.1:8000/v1] [--rounds 5]
"""

import argparse
import concurrent.futures
import time

import dspy
from dspy.utils.exceptions import AdapterParseError

from dspy_graph import PARAGRAPHS, build_program, pool_lm
from dspy_parse_failures import MORE_PARAGRAPHS


def run(pool, stop, paragraphs, threads, max_tokens):
    lm = pool_lm(pool, max_tokens, stop_at_completed=stop)
    program = build_program()

    def extract(paragraph):
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
            try:
                program(paragraph=paragraph)
                return False
            except AdapterParseError:  # both ChatAdapter and its JSONAdapter retry failed; anything else stops the run
                return True

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool_threads:
        failures = sum(pool_threads.map(extract, paragraphs))
    seconds = time.monotonic() - started
    tokens = sum((call.get("usage") or {}).get("completion_tokens", 0) for call in lm.history)
    return seconds, tokens, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    paragraphs = PARAGRAPHS + MORE_PARAGRAPHS
    print(f"{len(paragraphs)} paragraphs a row, greedy, max_tokens {args.max_tokens}, {args.threads} threads")
    print(f"{'round':>5} {'stop at marker':>14} {'seconds':>8} {'tokens':>7} {'not parsed':>10}")
    for round_number in range(1, args.rounds + 1):
        for stop in (False, True):
            seconds, tokens, failures = run(args.pool, stop, paragraphs, args.threads, args.max_tokens)
            row = f"{round_number:>5} {'yes' if stop else 'no':>14} {seconds:>8.1f} {tokens:>7} {failures:>10}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
