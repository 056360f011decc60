"""Python mlx-lm as a benchmark peer: loads one model folder once, then answers requests read from stdin,
one JSON object per line ({"messages": [...], "max_tokens": N}), with one JSON line of timings each.

With a second argument `dense`, the quantized layers are dequantized after loading (mlx-lm's own
`dequantize_model`), the same float32 products the worker's --mlx-dense computes.

Each request is run as `mlx_lm.generate` runs it (its chat template, its defaults: prefill steps of 2048,
greedy), except that it decodes exactly max_tokens (EOS does not stop it), so that both engines of
`coordinator mlx-bench` do the same work. Timings are taken here, around the generation only.
"""

import json
import sys
import time

import mlx.core as mx
import mlx_lm
from mlx_lm.generate import generate_step
from mlx_lm.utils import dequantize_model


def main():
    model, tokenizer = mlx_lm.load(sys.argv[1])
    if sys.argv[2:] == ["dense"]:
        model = dequantize_model(model)
        mx.eval(model.parameters())
    print(json.dumps({"ready": True, "peak_memory_bytes": mx.get_peak_memory()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        text = tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=False)
        prompt = tokenizer.encode(text, add_special_tokens=False)
        started = time.perf_counter()
        first = None
        generated = []
        for token, _ in generate_step(mx.array(prompt), model, max_tokens=request["max_tokens"]):
            if first is None:
                first = time.perf_counter()
            generated.append(token)
        finished = time.perf_counter()
        print(json.dumps({
            "prompt_tokens": len(prompt),
            "completion_tokens": len(generated),
            "ttft_ms": (first - started) * 1000.0,
            "total_ms": (finished - started) * 1000.0,
            "decode_ms": (finished - first) * 1000.0,
            "text": tokenizer.decode(generated),
            "peak_memory_bytes": mx.get_peak_memory(),
        }), flush=True)


if __name__ == "__main__":
    main()
