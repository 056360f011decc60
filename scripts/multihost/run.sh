#!/usr/bin/env bash
# The real multi-host run: `scripts/multihost/run.sh HOSTS_FILE --advertise http://THIS_HOST:50050 [...]`.
# Starts the coordinator here (listening on 0.0.0.0:50050 unless --listen says otherwise), the workers on
# each host over ssh (copying the worker binary, the MLX library and the model when a host lacks them),
# runs the bench and prints the report grouped by host. See docs/multihost.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
hosts=${1:?usage: run.sh HOSTS_FILE --advertise http://THIS_HOST:50050 [coordinator multihost flags]}
shift
scripts/setup.sh
cargo build --release -p worker -p coordinator -p lab
exec "${CARGO_TARGET_DIR:-target}/release/lab" multihost --hosts "$hosts" "$@"
