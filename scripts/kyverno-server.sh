#!/usr/bin/env bash
# Runs Kyverno's admission server (tests/tools/build.sh path kyverno-server, the
# same module and version as the Kyverno CLI) out of cluster against an API
# server, e.g. the tests' local control plane, and removes what it registered
# when it stops.
#
#   scripts/kyverno-server.sh --kubeconfig FILE [--kubectl PATH] [--port PORT] [--dir DIR]
#
# Steps: Kyverno's CRDs applied server-side (from the CRD directory of
# `tests/tools/build.sh path crds`), namespace `kyverno` and the empty
# ConfigMaps `kyverno` and `kyverno-metrics`, then the server with
# --serverIP=127.0.0.1:PORT (the URL it writes into its webhook
# configurations) and the CA/TLS Secret names it fills itself. Ready when its
# webhook configurations call https://127.0.0.1:PORT/...: then
# `ready <port> <pid>` is printed on stdout (the webhooks for resources appear
# once a policy exists: callers poll for their policy's effect).
#
# It stops on EOF on standard input (how crates/test-support/src/kyverno.rs
# runs it: the test process ending, however it ends, closes the pipe), on
# SIGINT/SIGTERM (Ctrl-C), or when the server exits: the server gets SIGTERM,
# SIGKILL after 5 s, then Kyverno's webhook configurations are deleted so the
# API server stops calling a port nobody listens on. The CRDs, the namespace
# and the policies stay (cheap, and a restart reuses them).
#
# Everything it runs is logged to DIR (default: a new temporary directory):
# kyverno.log (the server), setup.log (kubectl). A missing tool or a server
# that does not become ready fails with the reason and the log's tail.
set -euo pipefail
shopt -s inherit_errexit

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { printf 'kyverno-server: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'kyverno-server: %s\n' "$*" >&2; }

kubeconfig='' kubectl='' port='' dir=''
while (($#)); do
    case $1 in
    --kubeconfig) kubeconfig=$2; shift 2 ;;
    --kubectl) kubectl=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -n $kubeconfig && -f $kubeconfig ]] || die "--kubeconfig FILE is required and must exist (got '$kubeconfig')"
[[ -n $kubectl ]] || kubectl=$(command -v kubectl || true)
[[ -n $kubectl && -x $kubectl ]] ||
    die "no kubectl: pass --kubectl (the tests use the one of tests/control-plane/build.sh)"
if [[ -z $port ]]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
[[ $port =~ ^[0-9]+$ ]] || die "--port must be a number (got '$port')"
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
[[ -n $dir ]] || dir=$(mktemp -d -t kyverno-server.XXXXXX)
mkdir -p "$dir"

server=$("$root/tests/tools/build.sh" path kyverno-server) || die "cannot build Kyverno's admission server (see above)"
crds=$("$root/tests/tools/build.sh" path crds) || die "cannot collect Kyverno's CRDs (see above)"

k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }

pid=''
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    k delete mutatingwebhookconfigurations,validatingwebhookconfigurations \
        -l webhook.kyverno.io/managed-by=kyverno --ignore-not-found --wait=false >>"$dir/setup.log" 2>&1 || true
    log "stopped (logs in $dir)"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

log "applying Kyverno's CRDs server-side"
shopt -s nullglob
files=("$crds"/kyverno-*.yaml)
((${#files[@]})) || die "no kyverno-*.yaml CRDs in $crds"
args=()
for f in "${files[@]}"; do args+=(-f "$f"); done
k apply --server-side --force-conflicts "${args[@]}" >>"$dir/setup.log" 2>&1 ||
    die "applying the CRDs failed: $(tail -5 "$dir/setup.log")"
k wait --for condition=established --timeout=60s "${args[@]}" >>"$dir/setup.log" 2>&1 ||
    die "the CRDs are not established: $(tail -5 "$dir/setup.log")"
k apply --server-side -f - >>"$dir/setup.log" 2>&1 <<'EOF' || die "creating namespace kyverno and its ConfigMaps failed: $(tail -5 "$dir/setup.log")"
apiVersion: v1
kind: Namespace
metadata:
  name: kyverno
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: kyverno
  namespace: kyverno
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: kyverno-metrics
  namespace: kyverno
EOF

log "starting $server on 127.0.0.1:$port"
KYVERNO_NAMESPACE=kyverno \
    KYVERNO_SERVICEACCOUNT_NAME=kyverno-admission-controller \
    KYVERNO_DEPLOYMENT=kyverno-admission-controller \
    KYVERNO_POD_NAME="kyverno-out-of-cluster-$$" \
    INIT_CONFIG=kyverno \
    METRICS_CONFIG=kyverno-metrics \
    "$server" \
    --kubeconfig="$kubeconfig" \
    --serverIP="127.0.0.1:$port" \
    --webhookServerPort="$port" \
    --webhookServerHost=127.0.0.1 \
    --metricsPort="$metrics_port" \
    --controllerRuntimeMetricsAddress=0 \
    --caSecretName=kyverno-svc.kyverno.svc.kyverno-tls-ca \
    --tlsSecretName=kyverno-svc.kyverno.svc.kyverno-tls-pair \
    --backgroundServiceAccountName=system:serviceaccount:kyverno:kyverno-background-controller \
    --reportsServiceAccountName=system:serviceaccount:kyverno:kyverno-reports-controller \
    --admissionReports=false \
    -v=1 \
    </dev/null >"$dir/kyverno.log" 2>&1 &
pid=$!

# Ready when the API server would call this process: Kyverno's own webhook
# configurations (policy validation, the verify webhook; those for resources
# follow once a policy exists) point at our port.
deadline=$((SECONDS + 180))
until [[ $(k get mutatingwebhookconfigurations,validatingwebhookconfigurations -l webhook.kyverno.io/managed-by=kyverno \
    -o jsonpath='{.items[*].webhooks[*].clientConfig.url}' 2>/dev/null) == *"https://127.0.0.1:$port/"* ]]; do
    kill -0 "$pid" 2>/dev/null || die "the server exited before it was ready: $(tail -20 "$dir/kyverno.log")"
    ((SECONDS < deadline)) || die "the server did not register its webhooks within 180 s: $(tail -20 "$dir/kyverno.log")"
    sleep 0.5
done
# ... and its TLS serving certificate (generated into a Secret after start) is in
# use: before that the API server's calls fail with "tls: internal error".
until [[ $(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/health/liveness") == 200 ]]; do
    kill -0 "$pid" 2>/dev/null || die "the server exited before it served TLS: $(tail -20 "$dir/kyverno.log")"
    ((SECONDS < deadline)) || die "the server did not serve TLS within 180 s: $(tail -20 "$dir/kyverno.log")"
    sleep 0.5
done
log "ready: webhooks registered at https://127.0.0.1:$port (pid $pid, logs in $dir)"
echo "ready $port $pid"

# Until EOF on stdin (when it is not a terminal), a signal, or the server's own exit.
if [[ -t 0 ]]; then
    wait "$pid" || true
else
    while kill -0 "$pid" 2>/dev/null; do
        status=0
        read -r -t 1 _ || status=$?
        # >128: the timeout, keep waiting; anything else: EOF (or a line): stop.
        ((status > 128)) || break
    done
fi
kill -0 "$pid" 2>/dev/null || log "the server exited on its own: $(tail -5 "$dir/kyverno.log")"
