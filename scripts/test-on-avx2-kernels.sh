#!/usr/bin/env bash
# The whole test suite (scripts/test.sh) on the kernels an AVX2-only CPU gets, on any x86-64 machine:
# llama.cpp's CPU modules for newer CPUs (AVX-512, AVX-VNNI, AMX) are moved out of the build's module
# folder for the run and back at its end, so every worker and every in-process engine picks `haswell`
# (or an older module where the CPU lacks AVX2), and OpenBLAS is held to its Haswell kernels.
#
# What it shows: no test's expected output depends on the newer kernels' rounding, and every test
# passes on the kernels an AVX2-only machine runs. What it does not: that nothing else executes an
# instruction such a CPU lacks (this CPU runs them all); worker/tests/avx2_only_cpu.rs checks that on
# an emulated Haswell. Skipped here: that file's probe test, which needs the moved skylakex module.
#
#   usage: scripts/test-on-avx2-kernels.sh [more arguments for cargo test's test binaries]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --bins
target=${CARGO_TARGET_DIR:-target}

# The modules an AVX2-only x86-64 CPU can have chosen for it (ggml's CPU variants up to Haswell).
keep='^libggml-cpu-(x64|sse42|sandybridge|ivybridge|piledriver|haswell)\.so$'
haswell=$("$target/release/worker" --list-runtime-files | grep -m1 '/libggml-cpu-haswell\.so$' || true)
if [ -z "$haswell" ]; then
  echo "test-on-avx2-kernels: the worker has no haswell CPU module (an x86-64 Linux build loads them at start)" >&2
  exit 1
fi
folder=$(dirname "$haswell")
moved=$(mktemp -d)
restore() {
  find "$moved" -name 'libggml-cpu-*.so' -exec mv -t "$folder" {} +
  rm -rf "$moved"
}
trap restore EXIT
for module in "$folder"/libggml-cpu-*.so; do
  if ! basename "$module" | grep -Eq "$keep"; then
    mv "$module" "$moved/"
  fi
done
echo "test-on-avx2-kernels: moved aside for the run: $(cd "$moved" && echo *)" >&2
echo "test-on-avx2-kernels: left: $("$target/release/worker" --list-runtime-files | grep -o 'libggml-cpu-[a-z0-9]*' | tr '\n' ' ')" >&2

OPENBLAS_CORETYPE=Haswell scripts/test.sh -- --skip on_an_avx2_only_cpu_an_avx512_module_fails_its_probe_and_haswell_passes "$@"

# A rebuild of llama-cpp-sys-2 during the run would have put every module back (in this folder or a new
# one), and the run would then not have been on AVX2 kernels: the worker's own list says.
left_after=$("$target/release/worker" --list-runtime-files)
for module in "$moved"/libggml-cpu-*.so; do
  if grep -q "/$(basename "$module")\$" <<<"$left_after"; then
    echo "test-on-avx2-kernels: $(basename "$module") came back during the run (llama.cpp was rebuilt); run again" >&2
    exit 1
  fi
done
echo "test-on-avx2-kernels: passed on the AVX2 kernels" >&2
