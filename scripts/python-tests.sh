#!/usr/bin/env bash
# The Python tests: the official `openai` client against a real pool (coordinator + worker started by the
# tests from target/release). Creates .venv with tests/python/requirements.txt on first use; expects the
# release binaries built (scripts/test.sh builds them first).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/python/requirements.txt "$venv/requirements.txt"; then
  echo "python-tests: creating $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  cp tests/python/requirements.txt "$venv/requirements.txt"
fi
exec "$venv/bin/python" -m pytest -q tests/python "$@"
