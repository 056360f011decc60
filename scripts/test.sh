#!/usr/bin/env bash
# The tests: sets up, checks the layout the README promises (scripts/structure-check.py: no import
# circles between modules, the README's map names every source file), builds every binary
# (integration tests start real worker processes), runs the whole workspace's tests in release mode
# (llama.cpp is built once, optimised, for both), then the Python tests (the official openai client against a real pool) in .venv. The MLX reference fixtures
# (pinned Python mlx-lm in a venv, model folders and mlx-lm's answers) are built first, cached. Last,
# the Helm chart is rendered and validated offline (scripts/k8s-check.sh, pinned tools, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
python3 scripts/structure-check.py
cargo build --release --workspace --bins
MODELPOOL_MLX_FIXTURES=$(scripts/mlx-fixture.sh --dir)
export MODELPOOL_MLX_FIXTURES
cargo test --release --workspace "$@"
scripts/python-tests.sh
scripts/k8s-check.sh
