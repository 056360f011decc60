#!/usr/bin/env bash
# Stages what the pool's image holds into OUT (bin/: the daemons, llama.cpp's shared libraries and CPU
# modules beside the worker, where it looks for them; mlx/: the MLX CPU library they link), from a
# release build in ${CARGO_TARGET_DIR:-target}. Used by deploy/Dockerfile's build stage and, for an
# image built from the host's binaries, by scripts/image-check.sh.
set -euo pipefail
out=${1:?usage: stage-image-files.sh OUT}
cd "$(dirname "$0")/.."
release="${CARGO_TARGET_DIR:-target}/release"
rm -rf "$out"
mkdir -p "$out/bin"
cp "$release/worker" "$release/coordinator" "$out/bin/"
"$release/worker" --list-runtime-files | xargs -I{} cp -L {} "$out/bin/"
strip --strip-debug "$out"/bin/*.so*
cp -r "${MODELPOOL_CACHE_DIR:-$HOME/.cache/modelpool}/mlx-cpu-0.32.2" "$out/mlx"
