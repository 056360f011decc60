#!/usr/bin/env bash
# Creates examples/.venv with DSPy and Gradio (a few minutes the first time; nothing else is installed).
set -euo pipefail
cd "$(dirname "$0")"
../scripts/setup.sh
if [ ! -x .venv/bin/python ] || ! cmp -s requirements.txt .venv/requirements.txt; then
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  cp requirements.txt .venv/requirements.txt
fi
echo "examples: ready (.venv)"
