#!/usr/bin/env bash
# Installs what the build needs and nothing else: cmake and a C/C++ toolchain for llama.cpp (built by the
# llama-cpp-sys-2 crate), libclang for its bindgen, and Python with pip (the default model is a PyPI
# package). Safe to run again: it installs only what is missing.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# The Python tests run in a virtualenv; Debian's python3 needs python3-venv for that.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# scripts/routing-bench.sh polls the coordinator's /ready with curl.
command -v curl >/dev/null 2>&1 || missing+=(curl)
# scripts/mlx-bench.sh measures MLX's float32 path (--mlx-dense) with an optimized BLAS preloaded; the
# mlx-cpu wheel bundles the reference BLAS.
ls /usr/lib/*/libopenblas.so.0 >/dev/null 2>&1 || missing+=(libopenblas0-pthread)
# The multi-host simulation (a test) puts workers in network namespaces with `ip`.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# The ssh path of `coordinator multihost` is tested against real ssh servers, one per namespace.
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
# The worker is tested on an emulated AVX2-only CPU (worker/tests/avx2_only_cpu.rs).
command -v qemu-x86_64 >/dev/null 2>&1 || missing+=(qemu-user)
# The coordinator's status page is tested in a real headless browser.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get here; install these yourself: ${missing[*]}" >&2; exit 1
  fi
  $sudo apt-get update -qq
  # Installed, not started: without a policy saying so, openssh-server's package would start a system
  # sshd on port 22 (the tests start their own, on namespace addresses only).
  policy=/usr/sbin/policy-rc.d
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee $policy >/dev/null && $sudo chmod +x $policy
    trap "$sudo rm -f $policy" EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }

# On Linux the MLX engine builds against this project's mlx-sys stand-in (crates/mlx-sys), swapped in by
# a patch in cargo's configuration. Written here rather than in Cargo.toml because a manifest patch cannot
# be limited to one OS, and on macOS upstream mlx-sys (Metal) must be used as it is.
if [ "$(uname -s)" = Linux ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  config="$root/.cargo/config.toml"
  if ! grep -qs '^mlx-sys = { path = "crates/mlx-sys" }' "$config"; then
    mkdir -p "$root/.cargo"
    printf '%s\n' '# Written by scripts/setup.sh (Linux only): build mlx-rs against the Linux stand-in for mlx-sys.' \
      '[patch.crates-io]' 'mlx-sys = { path = "crates/mlx-sys" }' >> "$config"
  fi
  # llama.cpp is shared libraries on x86-64 Linux (its CPU modules need them), and libmlx.so's bundled
  # gguflib exports a gguf_get_key of its own: whichever library the loader finds first serves both
  # engines' calls, and one of them crashes (seen: llama.cpp's model loader in MLX's function). Building
  # llama.cpp with its copy renamed keeps each engine on its own.
  # llama-cpp-sys-2 links llama.cpp's unversioned library names beside the binaries as copies of the
  # symlinks they are, which dangle there; its next build (after a flag or source change) then stops on
  # "File exists" trying to link them again. Dangling ones are removed before every build.
  target_dir=${CARGO_TARGET_DIR:-$root/target}
  [ -d "$target_dir" ] && find "$target_dir" -maxdepth 3 -xtype l \( -name 'libllama*.so' -o -name 'libggml*.so' \) -delete
  if ! grep -qs '^CXXFLAGS_x86_64_unknown_linux_gnu' "$config"; then
    printf '%s\n' '' '# Written by scripts/setup.sh: keeps llama.cpp'"'"'s gguf_get_key apart from libmlx.so'"'"'s (see setup.sh).' \
      '[env]' 'CXXFLAGS_x86_64_unknown_linux_gnu = "-Dgguf_get_key=llama_ggml_gguf_get_key"' >> "$config"
  fi
fi
