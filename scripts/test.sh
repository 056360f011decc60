#!/usr/bin/env bash
# The tests: sets up, builds every binary (integration tests start real worker processes), and runs the
# whole workspace's tests in release mode (llama.cpp is built once, optimised, for both).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
