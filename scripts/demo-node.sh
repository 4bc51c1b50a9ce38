#!/usr/bin/env bash
# `make demo` on a real node: started by scripts/demo.sh once `tests/node/cluster.sh preflight`
# passed and `make node image test-images` and helm are built.
#   1. `tests/node/cluster.sh up`: etcd, kube-apiserver, controller-manager, scheduler,
#      containerd + runc, kubelet, kube-proxy on this machine (one cluster per machine: a lock;
#      a second run waits for the first);
#   2. `cluster.sh install --set replicaCount=2`: the chart by helm, self-signed TLS, the image
#      of `make image` (pullPolicy Never), in a namespace enforcing restricted Pod Security;
#   3. examples/ applied as the API-server demo applies them, each pod held by a scheduling gate:
#      they name registry images and real storage (Longhorn, NFS, a USB device), so they are
#      decided and reported, never run;
#   4. pods of its own in the namespace userns-demo, from the local shell image, that really
#      run: emptyDir, configMap, projected token + downwardAPI, a hostPath on tmpfs and a claim
#      bound to a local PV (the webhook enables them), one with a UID above 65535 (skipped), one
#      on the host network and one opted out (never sent to the webhook);
#   5. the report: each claim's label; each pod's decision, hostUsers, phase and, for a running
#      container, its /proc/<pid>/uid_map read on the host; the owner, on the host, of the files
#      the containers' root wrote into their volumes.
# `cluster.sh down` on exit, on Ctrl-C and on SIGTERM: nothing stays behind.
#
# Environment: as scripts/demo.sh (DEMO_WAIT, DEMO_KEEP_LOGS: also keeps the node's logs);
# DEMO_SECONDS, the seconds scripts/demo.sh had already run; USERNS_NODE_DIR, the node's state
# directory (tests/node/cluster.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS=${DEMO_SECONDS:-0}
PREFIX=userns.io
DEMO_NS=userns-demo
RELEASE_NS=userns-system
GATE=userns.io/demo-not-run

work=$(mktemp -d -t userns-labeler-demo.XXXXXX)
export CLUSTER_ENV=$work/cluster.env
up_pid=""
cluster_up=0

# shellcheck source=demo-common.sh
source scripts/demo-common.sh

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ $status -ne 0 && $status -ne 130 && $status -ne 143 ]]; then
        echo "demo failed (exit $status); logs:" >&2
        print_logs "$work"
    fi
    # `cluster.sh up` still waiting (for the lock, or for the node): it stops its own supervisor.
    if [[ -n $up_pid ]] && kill -0 "$up_pid" 2>/dev/null; then
        kill -TERM "$up_pid" 2>/dev/null || true
        wait "$up_pid" 2>/dev/null || true
    fi
    if ((cluster_up)); then
        say "Stopping the cluster (tests/node/cluster.sh down)"
        local keep=0
        [[ ${DEMO_KEEP_LOGS:-0} == 1 ]] && keep=1
        USERNS_TEST_KEEP=$keep tests/node/cluster.sh down 2>&1 | grep -E 'cluster down|logs kept|error' || true
    fi
    remove_work "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "Starting a real single-node cluster (tests/node/cluster.sh up; waits while another run holds the node's lock)"
# In the background, so that a signal reaches this script at once (cleanup stops it).
tests/node/cluster.sh up >"$work/cluster-up.out" &
up_pid=$!
wait "$up_pid"
up_pid=""
cluster_up=1
# shellcheck disable=SC1090
source "$CLUSTER_ENV"
export KUBECONFIG
k() { "$KUBECTL" "$@"; }
node_dir=$(dirname "$KUBECONFIG")
ctr_bin=$(tests/node/build.sh path ctr)
ctr() { "$ctr_bin" --address "$node_dir/containerd/containerd.sock" -n k8s.io "$@" 2>/dev/null; }
node=$(k get nodes -o 'jsonpath={.items[0].metadata.name}')
echo "node $node Ready: $(uname -sr), $(k version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -n 1)," \
    "containerd $(ctr version | sed -n 's/^ *Version: *//p' | tail -n 1)"

say "Installing the chart (tests/node/cluster.sh install --set replicaCount=2: helm, self-signed TLS, the local image)"
tests/node/cluster.sh install --set replicaCount=2 >"$work/helm.log" 2>&1
k -n "$RELEASE_NS" get deployment userns-labeler --no-headers \
    -o 'custom-columns=N:.metadata.name,READY:.status.readyReplicas,OF:.spec.replicas' |
    awk '{print "deployment " $1 ": " $2 "/" $3 " replicas ready"}'

k create namespace "$DEMO_NS" >/dev/null
until_ok 60 "the default ServiceAccount of $DEMO_NS" k -n "$DEMO_NS" get serviceaccount default
shell_image=$(cat target/images/shell.ref)
probe() {
    local decision
    decision=$(k run demo-probe --namespace "$DEMO_NS" --image "$shell_image" --restart Never \
        --dry-run=server -o "jsonpath={.metadata.annotations.userns\.io/decision}")
    [[ -n $decision ]]
}
until_ok 60 "the API server to call the webhook" probe
echo "the API server calls the webhook through the chart's Service (checked with a server-side dry run)"

# Every Pod of a manifest gets a scheduling gate: the webhook decides it as usual, the scheduler
# never places it, so the kubelet never pulls its image or mounts its storage.
gated() {
    add_to_pods "$1" "  schedulingGates:"$'\n'"    - name: $GATE"$'\n'
}
# A retry: the controller-manager may create a namespace's `default` ServiceAccount while
# kubectl applies examples/00-namespaces.yaml's own copy of it.
apply_file() {
    local verb=apply attempt
    # kubectl apply refuses objects that only have generateName (see examples/README.md)
    [[ $1 == *15-pod-generatename.yaml ]] && verb=create
    for attempt in 1 2 3; do
        gated "$1" | k "$verb" -f - >>"$work/apply.log" 2>&1 && return 0
        sleep 1
    done
    echo "applying $1 failed:" >&2
    tail -n 5 "$work/apply.log" >&2
    return 1
}

say "Applying examples/ (each pod held by the scheduling gate $GATE: registry images, real storage)"
for file in examples/*.yaml; do
    apply_file "$file"
done
echo "applied $(ls examples/*.yaml | wc -l) files"

say "Creating pods of the local shell image in $DEMO_NS that can run here"
fixtures=$node_dir/demo
mkdir -p "$fixtures/tmpfs" "$fixtures/local-pv"
# (under the node's state directory: `cluster.sh down` unmounts and removes it)
mount -t tmpfs -o size=8m userns-demo "$fixtures/tmpfs"
# cat: the user-namespace mapping as the container sees it; touch: a file its root writes.
pod() { # name mount-path(or "") write(yes|no) spec-yaml [metadata-yaml]
    local name=$1 mount=$2 write=$3 spec=$4 meta=${5:-} script="cat /proc/self/uid_map; " mounts=""
    [[ $write == yes ]] && script+="touch $mount/written-by-root; "
    script+="exec sleep 86400"
    [[ -n $mount ]] && mounts="      volumeMounts: [{name: vol, mountPath: $mount}]"
    cat <<EOF
---
apiVersion: v1
kind: Pod
metadata:
  name: $name
  namespace: $DEMO_NS
$meta
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: $shell_image
      imagePullPolicy: Never
      command: [/bin/sh, -c, "$script"]
$mounts
$spec
EOF
}
{
    cat <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: $DEMO_NS}
data: {greeting: hello}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: $DEMO_NS-local}
spec:
  capacity: {storage: 8Mi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: $DEMO_NS, name: local-data}
  local: {path: $fixtures/local-pv}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$node]}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: local-data, namespace: $DEMO_NS}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: $DEMO_NS-local
  resources: {requests: {storage: 8Mi}}
EOF
    pod emptydir /data yes '  volumes: [{name: vol, emptyDir: {}}]'
    pod configmap /config no '  volumes: [{name: vol, configMap: {name: settings}}]'
    pod projected-token /var/run/demo no '  volumes:
    - name: vol
      projected:
        sources:
          - serviceAccountToken: {path: token, expirationSeconds: 3600}
          - downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}'
    pod hostpath-tmpfs /data yes "  volumes: [{name: vol, hostPath: {path: $fixtures/tmpfs, type: Directory}}]"
    pod local-pv-claim /data yes '  volumes: [{name: vol, persistentVolumeClaim: {claimName: local-data}}]'
    pod high-uid "" no '  securityContext: {runAsUser: 70000, runAsGroup: 70000}'
    pod host-network "" no '  hostNetwork: true'
    pod opted-out "" no "" "  labels: {$PREFIX/opt-out: \"true\"}"
} >"$work/demo-pods.yaml"
k apply -f "$work/demo-pods.yaml" >>"$work/apply.log"
demo_pods=$(k -n "$DEMO_NS" get pods -o 'jsonpath={.items[*].metadata.name}')
echo "created: $demo_pods"

until_claims_labelled
all_running() {
    local phases
    phases=$(k -n "$DEMO_NS" get pods -o 'jsonpath={range .items[*]}{.status.phase}{"\n"}{end}')
    [[ -n $phases ]] && ! grep -qv '^Running$' <<<"$phases"
}
say "Waiting for the pods of $DEMO_NS to run"
not_running=0
until_ok 240 "every pod of $DEMO_NS to run" all_running || not_running=1
((not_running)) || echo "all running"

say "Claims: kubectl get pvc -A -L $PREFIX/idmap-supported"
k get pvc -A -L "$PREFIX/idmap-supported"

# Lines of |-separated fields as aligned columns.
table() {
    awk -F'|' '{ for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n[NR] = NF }
        END { for (r = 1; r <= NR; r++) { line = ""
            for (i = 1; i <= n[r]; i++) line = line (i < n[r] ? sprintf("%-" w[i] + 2 "s", cell[r, i]) : cell[r, i])
            print line } }'
}
say "Pods: the webhook's decision, hostUsers, phase, and the user-namespace mapping on the host"
# A container's host pid from containerd (the id in the pod's containerStatuses), its
# /proc/<pid>/uid_map read here: "inside outside count"; 0 0 4294967295 is the host's own.
tasks=$(ctr tasks ls)
pid_of() { # containerd://<id>; prints nothing for no container
    local id=${1#containerd://}
    [[ -z $id ]] || awk -v id="$id" '$1 == id {print $2}' <<<"$tasks"
}
uid_map_of() { # containerd://<id>
    local pid
    pid=$(pid_of "$1")
    [[ -z $pid || ! -r /proc/$pid/uid_map ]] || tr -s ' \n' '  ' </proc/"$pid"/uid_map | sed 's/^ //; s/ $//'
}
{
    echo "POD|DECISION|HOSTUSERS|PHASE|UID_MAP (inside outside count)"
    k get pods -A --sort-by .metadata.namespace -o 'jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}|{.metadata.annotations.userns\.io/decision}|{.spec.hostUsers}|{.status.phase}|{.status.conditions[?(@.type=="PodScheduled")].reason}|{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].containerID}{"\n"}{end}' |
        while IFS='|' read -r name decision host_users phase scheduled waiting id; do
            [[ -n $scheduled ]] && phase+=" ($scheduled)"
            [[ -n $waiting ]] && phase+=" ($waiting)"
            map=$(uid_map_of "$id")
            echo "$name|${decision:--}|${host_users:-<none>}|$phase|${map:--}"
        done
} | table
echo "(decision -: not sent to the webhook: the chart's matchConditions skip host namespaces and an"
echo " explicit hostUsers, the selectors the opt-out label and the webhook's own namespace)"

print_reasons

say "Files the containers' root wrote, as the host sees them"
# Written as uid 0 inside; through an idmapped mount (the `idmapped` option in the container's
# /proc/<pid>/mountinfo) they are owned by host uid 0, not by the unprivileged host uid the
# container's root maps to.
for spec in "emptydir|" "hostpath-tmpfs|$fixtures/tmpfs" "local-pv-claim|$fixtures/local-pv"; do
    name=${spec%%|*} dir=${spec#*|}
    pod_info=$(k -n "$DEMO_NS" get pod "$name" -o 'jsonpath={.metadata.uid} {.status.containerStatuses[0].containerID}' 2>/dev/null || true)
    if [[ -z $dir ]]; then
        dir=$node_dir/kubelet/root/pods/${pod_info%% *}/volumes/kubernetes.io~empty-dir/vol
    fi
    pid=$(pid_of "${pod_info#* }")
    mount="not running"
    if [[ -n $pid ]]; then
        mount=$(awk '$5 == "/data" { line = $0 } END { print (line ~ /idmapped/ ? "idmapped" : "not idmapped") }' "/proc/$pid/mountinfo")
    fi
    if [[ -e $dir/written-by-root ]]; then
        owner=$(stat -c %u:%g "$dir/written-by-root")
    else
        owner="(not written)"
    fi
    echo "$name|/data: $mount|owner on the host $owner|${dir/#$node_dir/\$D}/written-by-root"
done | table
echo "(\$D = $node_dir, the node's state directory)"

if ((not_running)); then
    say "Not every pod of $DEMO_NS runs:"
    k -n "$DEMO_NS" get events --field-selector type=Warning -o 'custom-columns=OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message' | tail -n 20
    exit 1
fi
echo
echo "examples/ pods stay Pending (SchedulingGated): their registry images and storage are not here."

if keeps_running; then
    say "The cluster keeps running; in another shell:"
    echo "  export KUBECONFIG=$KUBECONFIG"
    echo "  $KUBECTL get pods -A"
    echo "  $KUBECTL -n $DEMO_NS logs emptydir"
    echo "Press Ctrl-C to stop everything."
    supervisor=$(cat "$node_dir/supervisor.pid")
    while kill -0 "$supervisor" 2>/dev/null; do
        sleep 1
    done
    echo "the cluster's supervisor (pid $supervisor) exited on its own; stopping" >&2
    exit 1
fi
echo
echo "demo finished in ${SECONDS}s (DEMO_WAIT=1 keeps the cluster running); stopping everything"
