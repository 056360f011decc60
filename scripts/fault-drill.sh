#!/usr/bin/env bash
# Every fault and abuse of the hardening review against a real pool (the default model, real worker
# processes), one fresh pool per scenario: prints one row each (requests, answered, failed with a clear
# error, retried, lost, slowest) and exits non-zero if any prompt was lost. About a minute once built.
# Extra arguments go to `coordinator fault-drill` (--scenario sigkill,poison, --json FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
cargo build --release -p worker -p coordinator -p lab >&2
exec "${CARGO_TARGET_DIR:-target}/release/lab" fault-drill "$@"
