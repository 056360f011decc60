#!/usr/bin/env bash
# The head-to-head: builds the worker and the coordinator, and llama-server from the same pinned
# llama.cpp source package as llama-bench (scripts/build-llama-tool.sh; nothing committed) three times:
# portable (one AVX2 module), native (as a user who builds it builds it) and release (as llama.cpp's
# releases ship it: every CPU variant, the best chosen at start), then runs
# `coordinator server-bench`: a sweep of each side's parallelism (every llama-server build that runs
# here, with every -np and its automatic slots), then every workload (chats and DSPy-shaped calls that
# never repeat, growing conversations, a fixed 128:64 shape) in interleaved rounds through both OpenAI
# endpoints, with the same cores. Prints pool ÷ llama-server per workload; extra flags go to
# server-bench (e.g. --json FILE, --rounds 5, --threads 4, --workloads dspy; --hosts 2, as root: two
# simulated hosts, the pool against two llama-servers behind round-robin).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p worker -p coordinator -p lab
portable=$(scripts/build-llama-tool.sh llama-server portable)
native=$(scripts/build-llama-tool.sh llama-server native)
release=$(scripts/build-llama-tool.sh llama-server release)
# Beside it, the one program of that build that says which CPU module ggml loads here (named in the report).
scripts/build-llama-tool.sh llama-bench release >/dev/null
exec "${CARGO_TARGET_DIR:-target}/release/lab" server-bench --llama-server "$portable" --llama-server "$native" \
  --llama-server "$release" "$@"
