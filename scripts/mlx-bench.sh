#!/usr/bin/env bash
# The MLX engine against Python mlx-lm (pinned, in the venv scripts/mlx-fixture.sh creates) on the same
# mlx-lm folder, same machine, interleaved prompt by prompt. Default folder: the default model converted
# (scripts/mlx-fixture.sh). Extra arguments go to `coordinator mlx-bench` (--model DIR, --max-tokens,
# --repeats, --prompts, --worker-flag=--mlx-dense, --json FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
cargo build --release -p worker -p coordinator -p lab >&2
folder=$(scripts/mlx-fixture.sh)
python=$(scripts/mlx-fixture.sh --python)
exec "${CARGO_TARGET_DIR:-target}/release/lab" mlx-bench --model "$folder" --python "$python" --runner scripts/mlx/mlx_lm_runner.py "$@"
