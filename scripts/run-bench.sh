#!/usr/bin/env bash
# The main job: the experiment on the default model. Sets up, builds the worker and the coordinator,
# and runs `coordinator run-bench` with the arguments given (e.g. --sanity --show-outputs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p worker -p coordinator -p lab -p bench-client
exec "${CARGO_TARGET_DIR:-target}/release/lab" run-bench "$@"
