#!/usr/bin/env bash
# A simulated multi-host network on one Linux machine (needs root): namespace ${PREFIX}c holds the
# coordinator and a bridge (br0, NET.1); namespaces ${PREFIX}h1..N are the "hosts" (NET.11, NET.12, ...),
# each joined to the bridge by a veth pair whose host end is its eth0. The bridge lives inside ${PREFIX}c,
# so the machine's own firewall (Docker's, say) never sees the traffic.
#
#   netns.sh up PREFIX [N]          create (removing any leftovers of PREFIX first)
#   netns.sh hosts PREFIX [N]       print a hosts file for `coordinator multihost` (1 llama worker each)
#   netns.sh cut PREFIX I | heal PREFIX I    take host I's link down / up
#   netns.sh delay PREFIX I MS      add MS of delay to host I's link (tc netem)
#   netns.sh down PREFIX            remove everything
# NET defaults to 10.231.0 (MODELPOOL_SIM_NET).
set -euo pipefail
command=${1:?usage: netns.sh up|hosts|cut|heal|delay|down PREFIX ...}
prefix=${2:?a PREFIX names the namespaces}
net=${MODELPOOL_SIM_NET:-10.231.0}

down() {
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^${prefix}(c|h[0-9]+)$" || true); do
    ip netns del "$ns"
  done
}

case "$command" in
up)
  count=${3:-3}
  down
  ip netns add "${prefix}c"
  ip -n "${prefix}c" link set lo up
  ip -n "${prefix}c" link add br0 type bridge
  ip -n "${prefix}c" addr add "$net.1/24" dev br0
  ip -n "${prefix}c" link set br0 up
  for i in $(seq 1 "$count"); do
    ip netns add "${prefix}h$i"
    ip -n "${prefix}h$i" link set lo up
    ip link add "${prefix}v$i" type veth peer name eth0 netns "${prefix}h$i"
    ip link set "${prefix}v$i" netns "${prefix}c"
    ip -n "${prefix}c" link set "${prefix}v$i" master br0 up
    ip -n "${prefix}h$i" addr add "$net.1$i/24" dev eth0
    ip -n "${prefix}h$i" link set eth0 up
  done
  ;;
hosts)
  for i in $(seq 1 "${3:-3}"); do
    echo "netns:${prefix}h$i 1 llama 1 1 $net.1$i"
  done
  ;;
cut) ip -n "${prefix}h${3:?host number}" link set eth0 down ;;
heal) ip -n "${prefix}h${3:?host number}" link set eth0 up ;;
delay) ip netns exec "${prefix}h${3:?host number}" tc qdisc replace dev eth0 root netem delay "${4:?milliseconds}ms" ;;
down) down ;;
*) echo "netns.sh: unknown command $command" >&2; exit 2 ;;
esac
