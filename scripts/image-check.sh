#!/usr/bin/env bash
# The container image built and run for real, with no image registry: as root, it
#   1. starts the container engine if none runs (Debian's docker.io; installed if missing; no service
#      manager here, so dockerd itself, stopped again at the end),
#   2. makes the Debian 12 base image with mmdebstrap from this host's apt sources (cached as a tarball),
#   3. builds deploy/Dockerfile from the host's release build (--build-arg PREBUILT=1: no Rust toolchain
#      image can be pulled, and Debian 12's rustc is too old for this workspace; the host is Debian 12,
#      so its binaries run on that base),
#   4. runs a pool of containers on a network of its own (its own subnet): one coordinator and two
#      workers, non-root, read-only root filesystems, the default model mounted read-only, the API
#      published on 127.0.0.1 only; checks /health and /ready as the chart's probes do, sends prompts
#      through the API, kills worker 0 and starts it again while they run, and fails unless every
#      prompt was answered,
#   5. starts the same pool with deploy/compose.yaml (docker-compose) and sends prompts through it,
#   6. prints the image's size, the pool's start-up time and each container's memory beside the chart's
#      requests and limits.
# Traffic goes to 127.0.0.1 and to the containers it made. Everything it made is removed at the end.
# Exits non-zero when a step fails, including when it cannot set up.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
[ "$(id -u)" = 0 ] || { echo "image-check: needs root (it runs a container engine)" >&2; exit 1; }
cache=${MODELPOOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/modelpool}
mkdir -p "$cache/images"
name=modelpool-check-$$
tag=modelpool:check
work=$(mktemp -d /tmp/modelpool-image-check-XXXXXX)
say() { echo "image-check: $*" >&2; }

# --- 1. The engine and the tools.
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi
started_dockerd=""
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: $work/dockerd.log)"
  dockerd >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log" >&2; say "dockerd did not start"; exit 1; }
fi

cleanup() {
  set +e
  docker-compose -p "$name" -f "$root/deploy/compose.yaml" down -t 2 >/dev/null 2>&1
  docker rm -f "$name-coordinator" "$name-worker0" "$name-worker1" >/dev/null 2>&1
  docker network rm "$name" >/dev/null 2>&1
  [ -n "${bench_pid:-}" ] && kill "$bench_pid" 2>/dev/null
  if [ -n "$started_dockerd" ]; then kill "$started_dockerd"; wait "$started_dockerd" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A GET on 127.0.0.1 (no curl on a minimal Debian): prints the status code and the body.
http_get() {
  python3 - "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except Exception as e:
    print(0, e)
PY
}

# Says how many of a bench-client report's COUNT prompts were answered, and fails unless all were.
all_answered() {
  local ok failed
  read -r ok failed < <(python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['summaries'][0]; print(s['ok'], s['failed'])" "$1")
  say "$3: $ok of $2 answered, $failed failed"
  [ "$ok" = "$2" ] && [ "$failed" = 0 ] || { cat "$work/bench.log" >&2; exit 1; }
}

# --- 2. The base image: Debian 12 and the packages the runtime stage needs, from this host's sources.
packages=ca-certificates,python3,python3-pip,libgomp1,libopenblas0-pthread
base_key=$(echo "bookworm $packages" | sha256sum | cut -c1-12)
base=modelpool-base:bookworm-$base_key
if ! docker image inspect "$base" >/dev/null 2>&1; then
  tarball="$cache/images/base-$base_key.tar"
  if [ ! -f "$tarball" ]; then
    say "making the Debian 12 base with mmdebstrap (about a minute)"
    sources="$work/sources"
    # The host's Debian sources: its deb822 files' bookworm stanzas, else its one-line entries.
    for file in /etc/apt/sources.list.d/*.sources; do
      [ -f "$file" ] && awk -v RS= -v ORS='\n\n' '/Suites:[^\n]*bookworm/' "$file"
    done >"$sources"
    if [ ! -s "$sources" ] && [ -f /etc/apt/sources.list ]; then grep -E '^deb .* bookworm' /etc/apt/sources.list >"$sources" || true; fi
    [ -s "$sources" ] || { say "no Debian bookworm apt source on this host"; exit 1; }
    # mmdebstrap picks the output's format by its name: the partial file ends in .tar too.
    mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$tarball.part.tar" - <"$sources"
    mv "$tarball.part.tar" "$tarball"
  fi
  docker import "$tarball" "$base" >/dev/null
fi

# --- 3. The image, from the host's release build.
cargo build --release -p worker -p coordinator -p bench-client >&2
bin="${CARGO_TARGET_DIR:-target}/release"
model=$("$bin/worker" --print-model-path)
# Staged inside this checkout (the build context), whatever CARGO_TARGET_DIR says.
scripts/stage-image-files.sh "$root/target/image/out"
build_started=$(date +%s)
docker build -q -f deploy/Dockerfile --build-arg PREBUILT=1 --build-arg BUILD_IMAGE="$base" --build-arg BASE="$base" -t "$tag" . >/dev/null
image_bytes=$(docker image inspect -f '{{.Size}}' "$tag")
say "built $tag in $(( $(date +%s) - build_started )) s: $(( image_bytes / 1048576 )) MiB"

# --- 4. A pool of containers on a network of its own.
subnet=""
for third in $(shuf -i 20-250 -n 20); do
  if docker network create --subnet "10.213.$third.0/24" "$name" >/dev/null 2>&1; then subnet=10.213.$third; break; fi
done
[ -n "$subnet" ] || { say "could not create a container network"; exit 1; }
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
hardened=(--read-only --tmpfs /tmp --security-opt no-new-privileges --cap-drop ALL)
started=$(date +%s.%N)
docker run -d --name "$name-coordinator" --network "$name" --ip "$subnet.10" -p 127.0.0.1::8000 -p 127.0.0.1::50050 "${hardened[@]}" \
  -e MODELPOOL_TOKEN="$token" "$tag" \
  coordinator serve --bind 0.0.0.0 --port 50050 --http-port 8000 --allow-plaintext-http --heartbeat-timeout-ms 2000 >/dev/null
start_worker() {
  docker run -d --name "$name-worker$1" --network "$name" --ip "$subnet.2$1" "${hardened[@]}" \
    -v "$model:/models/model.gguf:ro" -e MODELPOOL_TOKEN="$token" "$tag" \
    worker --bind 0.0.0.0 --port 50051 --advertise "http://$subnet.2$1:50051" --coordinator "http://$subnet.10:50050" \
    --model /models/model.gguf --slots 2 --threads 1 >/dev/null
}
start_worker 0
start_worker 1
api=$(docker port "$name-coordinator" 8000/tcp | head -1)
grpc=$(docker port "$name-coordinator" 50050/tcp | head -1)
for published in "$api" "$grpc"; do
  case "$published" in 127.0.0.1:*) ;; *) say "a port is published on $published, not on 127.0.0.1 only"; exit 1 ;; esac
done

# Ready when both workers serve (what the chart's probes ask of each side is checked below).
wait_workers() {
  for _ in $(seq 240); do
    case "$(http_get "http://$api/ready")" in *"\"workers_serving\":$1"*) return 0 ;; esac
    sleep 0.25
  done
  say "the pool did not reach $1 serving workers: $(http_get "http://$api/ready")"
  docker logs --tail 20 "$name-worker0" >&2 || true
  return 1
}
wait_workers 2
startup=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)")
say "pool of containers serving in $startup s"
health=$(http_get "http://$api/health")
[ "${health%% *}" = 200 ] || { say "coordinator /health: $health"; exit 1; }
# The workers' probes: /health and /ready on their gRPC port, from inside the container network.
for i in 0 1; do
  for path in health ready; do
    code=$(docker exec "$name-worker$i" python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:50051/$path', timeout=5).status)")
    [ "$code" = 200 ] || { say "worker $i /$path: $code"; exit 1; }
  done
done

# Prompts through the HTTP API (OpenAI's, streamed).
"$bin/bench-client" --openai "http://$api/v1" --api-key "$token" --workload chats --num-prompts 8 \
  --scenario parallel --concurrency 4 --repeats 1 --max-tokens 16 --json "$work/api.json" >"$work/bench.log" 2>&1 ||
  { cat "$work/bench.log" >&2; say "bench-client through the API failed"; exit 1; }
all_answered "$work/api.json" 8 "through the containers' HTTP API"

# Prompts through the coordinator while worker 0 is killed and started again: none may be lost. Over
# gRPC, whose prompts reach the client whole, so that a prompt cut short on the killed worker is run
# again on the other (a streamed HTTP answer whose first words were sent fails plainly instead: a
# retry would send them twice).
report="$work/containers.json"
"$bin/bench-client" --coordinator "http://$grpc" --token "$token" --workload chats --num-prompts 40 \
  --scenario parallel --concurrency 4 --repeats 1 --max-tokens 24 --json "$report" >"$work/bench.log" 2>&1 &
bench_pid=$!
sleep 2
docker kill "$name-worker0" >/dev/null
sleep 1
docker start "$name-worker0" >/dev/null
wait "$bench_pid" || { cat "$work/bench.log" >&2; say "bench-client failed"; exit 1; }
bench_pid=""
all_answered "$report" 40 "through the containers, worker 0 killed and restarted under load"
wait_workers 2
say "worker 0 is back in the pool"

# Memory of each container after the run, beside the chart's figures (values.yaml).
echo "image: $tag, $(( image_bytes / 1048576 )) MiB; pool serving $startup s after the first container started"
docker stats --no-stream --format '{{.Name}} {{.MemUsage}}' "$name-coordinator" "$name-worker0" "$name-worker1" |
  sed "s/^$name-/  /"
echo "  chart: coordinator requests 64Mi, limit 256Mi; worker requests 320Mi, limit 512Mi"
docker rm -f "$name-coordinator" "$name-worker0" "$name-worker1" >/dev/null
docker network rm "$name" >/dev/null

# --- 5. The same pool with Compose.
compose=(docker-compose -p "$name" -f deploy/compose.yaml)
export MODELPOOL_IMAGE=$tag MODELPOOL_MODEL=$model MODELPOOL_TOKEN=$token MODELPOOL_HTTP_PORT=0
"${compose[@]}" up -d --scale worker=2 >/dev/null 2>"$work/compose.log" || { cat "$work/compose.log" >&2; exit 1; }
api=$("${compose[@]}" port coordinator 8000)
case "$api" in 127.0.0.1:*) ;; *) say "compose published the API on $api, not on 127.0.0.1 only"; exit 1 ;; esac
wait_workers 2
"$bin/bench-client" --openai "http://$api/v1" --api-key "$token" --workload chats --num-prompts 8 \
  --scenario parallel --concurrency 4 --repeats 1 --max-tokens 16 --json "$work/compose.json" >"$work/bench.log" 2>&1 ||
  { cat "$work/bench.log" >&2; say "bench-client through compose failed"; exit 1; }
all_answered "$work/compose.json" 8 "through deploy/compose.yaml"
"${compose[@]}" down -t 5 >/dev/null 2>&1
echo "image-check: passed"
