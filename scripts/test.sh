#!/usr/bin/env bash
# The tests: sets up, checks the formatting (cargo fmt) and the layout ARCHITECTURE.md promises
# (scripts/structure-check.py: no import circles between modules, its map names every source file),
# builds every binary (integration tests start real worker processes), lints with clippy (warnings are
# errors), runs the whole workspace's tests in release mode (llama.cpp is built once, optimised, for
# both), then the Python tests (the official openai client against a real pool) in .venv. The MLX
# reference fixtures (pinned Python mlx-lm in a venv, model folders and mlx-lm's answers) are built
# first, cached. Last, the Helm chart is rendered and validated offline (scripts/k8s-check.sh, pinned
# tools, cached) and, as root, the container image is built and run (scripts/image-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
python3 scripts/structure-check.py
cargo build --release --workspace --bins
# Lints as errors (release profile: the build scripts' outputs, llama.cpp's included, are the build's).
cargo clippy --release --workspace --all-targets -- -D warnings
MODELPOOL_MLX_FIXTURES=$(scripts/mlx-fixture.sh --dir)
export MODELPOOL_MLX_FIXTURES
# The simulated-hosts test (coordinator/tests/across_hosts.rs, root only) runs the pool against real
# llama-servers: the portable build, from the pinned source, cached after the first time.
if [ "$(id -u)" = 0 ] && [ -z "${MODELPOOL_LLAMA_SERVER:-}" ]; then
  MODELPOOL_LLAMA_SERVER=$(scripts/build-llama-tool.sh llama-server portable)
  export MODELPOOL_LLAMA_SERVER
fi
cargo test --release --workspace "$@"
scripts/python-tests.sh
scripts/k8s-check.sh
# The container image built and run (a pool of containers, a worker killed under load, Compose): as root,
# where it can run a container engine; CI runs as root, so there it always runs (and fails if it cannot).
if [ "$(id -u)" = 0 ]; then
  scripts/image-check.sh
elif [ -n "${CI:-}" ]; then
  echo "test.sh: scripts/image-check.sh needs root, and CI must run it" >&2
  exit 1
else
  echo "test.sh: scripts/image-check.sh not run (needs root: it runs a container engine)" >&2
fi
