#!/usr/bin/env bash
# Prefix routing against least-loaded routing on the workload it is for: a pool of WORKERS workers
# (default 2, SLOTS slots each, default 2) behind a coordinator, DSPy-shaped calls of PROGRAMS distinct
# programs interleaved (default 4), sent through the OpenAI API by bench-client. The two routings take
# turns for ROUNDS rounds (default 2), each with fresh workers (empty caches). Prints each run's
# bench-client table; compare the prompts/s and the reuse line.
set -euo pipefail
cd "$(dirname "$0")/.."
workers=${WORKERS:-2} slots=${SLOTS:-2} programs=${PROGRAMS:-4} rounds=${ROUNDS:-2} prompts=${PROMPTS:-16}
scripts/setup.sh
cargo build --release -p worker -p coordinator -p bench-client
bin=${CARGO_TARGET_DIR:-target}/release
threads=$(( $(nproc) / workers )); [ "$threads" -ge 1 ] || threads=1
run() {
  local routing=$1 pids=() line grpc http
  exec {out}< <("$bin/coordinator" serve --port 0 --http-port 0 --routing "$routing" 2>/dev/null)
  pids+=($!)
  read -r line <&"$out"
  grpc=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' <<<"$line"); http=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' <<<"$line")
  for _ in $(seq "$workers"); do
    RUST_LOG=warn "$bin/worker" --coordinator "$grpc" --threads "$threads" --slots "$slots" >/dev/null 2>&1 & pids+=($!)
  done
  until curl -sf "$http/ready" >/dev/null 2>&1 && [ "$(curl -s "$http/ready" | sed -n 's/.*"workers_serving":\([0-9]*\).*/\1/p')" = "$workers" ]; do sleep 0.2; done
  echo "== routing $routing: $workers workers x $slots slots x $threads threads, $programs programs, $prompts prompts"
  "$bin/bench-client" --openai "$http/v1" --workload shared-prefix --programs "$programs" --num-prompts "$prompts" \
    --scenario parallel --concurrency $((workers * slots)) --repeats 1 --max-tokens "${MAX_TOKENS:-32}" 2>/dev/null | grep -E "^(config|parallel|prompt tokens)"
  kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true
}
for round in $(seq "$rounds"); do
  run prefix
  run least-loaded
done
