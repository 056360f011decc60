#!/usr/bin/env bash
# The multi-host experiment on simulated hosts (needs root): three network namespaces with one worker
# each, the coordinator in a fourth, host 3's link slowed by 150 ms of delay (where the kernel has tc
# netem), host 2's link cut 3 s into the run and restored at 10 s. Prints the report grouped by host; extra arguments go to
# `coordinator multihost` (e.g. --json FILE). Everything is removed at the end, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/setup.sh
cargo build --release -p worker -p coordinator -p lab
prefix=mpsim
net=${MODELPOOL_SIM_NET:-10.231.0}
here=scripts/multihost
trap '$here/netns.sh down $prefix' EXIT
$here/netns.sh up $prefix 3
# Not every kernel has netem (this VM's has not): then the run goes on without the slow link.
$here/netns.sh delay $prefix 3 150 || echo "simulate: no tc netem here; host 3's link is not slowed" >&2
hosts=$(mktemp)
$here/netns.sh hosts $prefix 3 > "$hosts"
ip netns exec ${prefix}c "${CARGO_TARGET_DIR:-target}/release/lab" multihost --hosts "$hosts" --listen "$net.1:50050" \
  --prompts-per-worker 12 --max-tokens 48 \
  --fault-at 3 --fault "$here/netns.sh cut $prefix 2" --heal-at 10 --heal "$here/netns.sh heal $prefix 2" \
  --heartbeat-timeout-ms 2000 --token-gap-timeout-secs 5 "$@"
