#!/usr/bin/env bash
# The one-command demo (`make demo`), on one of two paths.
#
# On a machine that can run a real node (`tests/node/cluster.sh preflight`: root, Linux >= 6.3,
# cgroups, nftables, a bridge) it first builds what the node needs (`make node image
# test-images`, helm; cached after the first time) and then hands over to
# scripts/demo-node.sh: a real single-node cluster with the chart installed, examples/ applied
# and decided, and pods of its own that really run in user namespaces.
#
# Anywhere else (or with DEMO_NODE=0) it says why and runs the API-server demo:
#   1. start a local control plane (etcd + kube-apiserver on loopback, the integration tests'
#      harness, binaries from `make control-plane`);
#   2. run `userns-labeler run --self-signed-tls` against it;
#   3. register the webhook by URL (https://127.0.0.1:<port>/mutate/pods); `run` writes its
#      generated CA into the configuration's caBundle;
#   4. apply examples/ and print each claim's label and each pod's hostUsers and decision;
#   5. print `userns-labeler report -A`, the cluster's readiness for user namespaces.
# Everything it started is stopped on exit, on Ctrl-C and on SIGTERM.
#
# Environment: DEMO_NODE=0 forces the API-server demo, DEMO_NODE=1 the real node (failing
# when this machine cannot run it), unset: the real node when possible. DEMO_WAIT=1 keeps the
# cluster running after the report until Ctrl-C (the default when stdin is a terminal),
# DEMO_WAIT=0 stops at once; DEMO_MODE=audit runs the webhook in audit mode (default enforce;
# API-server demo); DEMO_KEEP_LOGS=1 keeps the log directory; CARGO (default cargo); MAKE
# (default make); RUST_LOG for the labeler (default info).
set -euo pipefail

cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
PREFIX=userns.io
DEMO_MODE=${DEMO_MODE:-enforce}
CONFIG_NAME=userns-labeler-demo
CONTROLLER_NS=userns-labeler

# shellcheck source=demo-common.sh
source scripts/demo-common.sh

# --- which path ---------------------------------------------------------------------------
# fallback_or_fail REASON: with DEMO_NODE=1 the reason is an error; otherwise it is said and
# the API-server demo follows.
fallback_or_fail() {
    if [[ ${DEMO_NODE:-} == 1 ]]; then
        echo "DEMO_NODE=1, but $1" >&2
        exit 1
    fi
    say "No real node: $1"
    echo "Falling back to the API-server demo (etcd + kube-apiserver on loopback: pods are decided, never run)."
}

case ${DEMO_NODE:-} in
0) say "DEMO_NODE=0: the API-server demo (etcd + kube-apiserver on loopback: pods are decided, never run)" ;;
"" | 1)
    say "Checking whether this machine can run a real node (tests/node/cluster.sh preflight)"
    if reason=$(tests/node/cluster.sh preflight 2>&1 >/dev/null); then
        echo "it can"
        say "Building the node's components and images (make node image test-images; helm): cached after the first time"
        build_start=$SECONDS
        if "${MAKE:-make}" --no-print-directory node image test-images CARGO="$CARGO" &&
            tests/tools/build.sh path helm >/dev/null; then
            echo "built in $((SECONDS - build_start))s"
            DEMO_SECONDS=$SECONDS CARGO=$CARGO exec scripts/demo-node.sh
        fi
        fallback_or_fail "the real node's components or images could not be built (output above)"
    else
        fallback_or_fail "${reason#this machine cannot run the real node: }"
    fi
    ;;
*)
    echo "DEMO_NODE must be 0, 1 or unset, not '$DEMO_NODE'" >&2
    exit 2
    ;;
esac

# --- the API-server demo ------------------------------------------------------------------
work=$(mktemp -d -t userns-labeler-demo.XXXXXX)
cp_pid=""
labeler_pid=""

stop() {
    local pid=$1 name=$2
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "$name did not stop within 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # The labeler first (it releases its lease), then the control plane.
    stop "$labeler_pid" userns-labeler
    stop "$cp_pid" "the control plane"
    if [[ $status -ne 0 && $status -ne 130 && $status -ne 143 ]]; then
        echo "demo failed (exit $status); logs:" >&2
        print_logs "$work"
    fi
    remove_work "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "Building userns-labeler and the demo control plane (cargo build; a few minutes the first time)"
build_start=$SECONDS
# On a terminal, cargo's own progress bar; otherwise (a log, CI) no per-crate lines, just the
# time it took.
if [[ -t 2 ]]; then
    "$CARGO" build --bin userns-labeler --example demo-control-plane
else
    "$CARGO" build --quiet --bin userns-labeler --example demo-control-plane
fi
echo "built in $((SECONDS - build_start))s"
target_dir=$("$CARGO" metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-target}
labeler_bin="$target_dir/debug/userns-labeler"
cp_bin="$target_dir/debug/examples/demo-control-plane"

say "Starting etcd and kube-apiserver on loopback"
unset USERNS_TEST_KUBECONFIG
"$cp_bin" "$work/env" >"$work/control-plane.log" 2>&1 &
cp_pid=$!
deadline=$((SECONDS + 180))
until [[ -f $work/env ]]; do
    kill -0 "$cp_pid" 2>/dev/null || { echo "the control plane did not start" >&2; exit 1; }
    ((SECONDS < deadline)) || { echo "the control plane was not ready within 180 s" >&2; exit 1; }
    sleep 0.2
done
# shellcheck disable=SC1091
source "$work/env"
export KUBECONFIG
k() { "$KUBECTL" "$@"; }
grep '^control plane:' "$work/control-plane.log" || true

say "Running userns-labeler run --self-signed-tls --webhook-mode $DEMO_MODE (webhook https://127.0.0.1:$WEBHOOK_PORT, admin http://127.0.0.1:$ADMIN_PORT)"
k create namespace "$CONTROLLER_NS" >/dev/null
RUST_LOG=${RUST_LOG:-info} "$labeler_bin" run \
    --kubeconfig "$KUBECONFIG" \
    --namespace "$CONTROLLER_NS" \
    --self-signed-tls \
    --webhook-mode "$DEMO_MODE" \
    --webhook-config-name "$CONFIG_NAME" \
    --webhook-addr "127.0.0.1:$WEBHOOK_PORT" \
    --admin-addr "127.0.0.1:$ADMIN_PORT" \
    >"$work/labeler.log" 2>&1 &
labeler_pid=$!

readyz() {
    kill -0 "$labeler_pid" 2>/dev/null || { echo "userns-labeler exited" >&2; exit 1; }
    exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT" || return 1
    printf 'GET /readyz HTTP/1.0\r\nHost: demo\r\n\r\n' >&3
    local status
    read -r _ status _ <&3 || true
    exec 3<&-
    [[ $status == 200 ]]
}
until_ok 60 "userns-labeler /readyz" readyz
echo "ready"

say "Registering the webhook by URL; userns-labeler writes its CA into the caBundle"
# As the Helm chart deploys it (deploy/helm/userns-labeler/templates/webhook.yaml), by URL instead
# of a Service, and without the chart's CEL matchConditions so that the demo also shows the
# reasons for pods with host namespaces or an explicit hostUsers: failurePolicy Ignore because
# the mutation only ever makes pods more isolated, so a webhook outage leaves pods as written;
# the opt-out label is honoured by selectors (such requests are not even sent) and again by the
# handler; the controller's own namespace and the system namespaces are never sent.
k apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: $CONFIG_NAME
webhooks:
  - name: pods.$PREFIX
    clientConfig:
      url: https://127.0.0.1:$WEBHOOK_PORT/mutate/pods
    rules:
      - apiGroups: [""]
        apiVersions: [v1]
        operations: [CREATE]
        resources: [pods]
        scope: Namespaced
    namespaceSelector:
      matchExpressions:
        - key: kubernetes.io/metadata.name
          operator: NotIn
          values: [kube-system, kube-node-lease, $CONTROLLER_NS]
        - key: $PREFIX/opt-out
          operator: NotIn
          values: ["true"]
    objectSelector:
      matchExpressions:
        - key: $PREFIX/opt-out
          operator: NotIn
          values: ["true"]
    failurePolicy: Ignore
    sideEffects: None
    admissionReviewVersions: [v1]
    timeoutSeconds: 5
    reinvocationPolicy: IfNeeded
EOF
probe() {
    local decision
    decision=$(k run demo-probe --namespace default --image registry.k8s.io/pause:3.10 \
        --restart Never --dry-run=server -o "jsonpath={.metadata.annotations.userns\.io/decision}")
    [[ -n $decision ]]
}
until_ok 60 "the API server to call the webhook" probe
echo "the API server calls the webhook (checked with a server-side dry run)"

# The test control plane runs without the ServiceAccount admission plugin (no
# controller-manager creates service accounts), and that plugin is what sets a pod's
# serviceAccountName to `default`; a pod projecting a service-account token without one is
# invalid. Do what the plugin would: add `serviceAccountName: default` to pods that lack it.
with_service_account() {
    add_to_pods "$1" $'  serviceAccountName: default\n' 'serviceAccountName:'
}

say "Applying examples/"
for file in examples/*.yaml; do
    case $file in
    # kubectl apply refuses objects that only have generateName (see examples/README.md)
    *15-pod-generatename.yaml) with_service_account "$file" | k create -f - ;;
    *) with_service_account "$file" | k apply -f - ;;
    esac
done

until_claims_labelled

say "Claims: kubectl get pvc -A -L $PREFIX/idmap-supported"
k get pvc -A -L "$PREFIX/idmap-supported"

say "Pods: hostUsers and the webhook's decision"
k get pods -A --sort-by .metadata.namespace -o \
    "custom-columns=NAMESPACE:.metadata.namespace,POD:.metadata.name,HOSTUSERS:.spec.hostUsers,DECISION:.metadata.annotations.userns\.io/decision"

print_reasons

say "The cluster's readiness: userns-labeler report -A (read-only; also -o json, -o html)"
"$labeler_bin" report -A --kubeconfig "$KUBECONFIG" --labeler-namespace "$CONTROLLER_NS"

if keeps_running; then
    say "The cluster keeps running; in another shell:"
    echo "  export KUBECONFIG=$KUBECONFIG"
    echo "  $KUBECTL get pods -A"
    echo "  $labeler_bin report -A -o html > report.html"
    echo "  curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep webhook_admissions"
    echo "Press Ctrl-C to stop everything."
    set +e
    wait -n "$labeler_pid" "$cp_pid"
    status=$?
    set -e
    # Ctrl-C reaches the whole process group: the components stop cleanly (status 0) at the
    # same moment as this script. Anything else is a component failing on its own.
    ((status == 0)) && exit 130
    echo "a component exited with status $status; stopping" >&2
    exit 1
fi
echo
echo "demo finished in ${SECONDS}s (DEMO_WAIT=1 keeps the cluster running); stopping everything"
