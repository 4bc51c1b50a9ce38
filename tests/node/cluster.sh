#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd + runc, kubelet and
# kube-proxy (nftables), built by `make control-plane node` and the local images
# of `make image test-images`. Used by `make cluster` and, through
# crates/test-support (node.rs), by the real-node tests: both run this script,
# so they behave the same.
#
#   cluster.sh run        start everything in the foreground, print `READY <kubeconfig>` on stdout,
#                         then stop and clean up when stdin reaches EOF or on SIGTERM/SIGINT
#   cluster.sh up         the same in the background (for `make cluster`, `make demo`): returns once
#                         ready and writes KUBECONFIG=/KUBECTL= lines to $CLUSTER_ENV (default
#                         target/cluster.env); interrupted or failing before that, it stops what
#                         it started (also a supervisor still waiting for the lock)
#   cluster.sh down       stop a background cluster and clean up (also the leftovers of a crash,
#                         unless another run holds the lock: then they are that run's own)
#   cluster.sh install    helm-install the chart into the running cluster (self-signed TLS, the
#                         local image); extra arguments go to helm
#   cluster.sh restart C  stop component C (kube-apiserver, kubelet, ...) and start it again
#   cluster.sh cleanup    remove what a crashed run left behind (processes, mounts, cgroups,
#                         the bridge, kube-proxy's nftables table, host paths); needs no lock holder
#   cluster.sh preflight  check that this machine can run the node, or print why not (exit 3)
#
# Needs root, Linux >= 6.3 (idmapped mounts on ext4 and tmpfs), cgroups, nftables and a bridge.
# Fixed names (the bridge, ports 6443/10250/..., the state directory) mean one cluster per
# machine: a lock serialises runs; a second run waits for the first (USERNS_NODE_LOCK_WAIT
# seconds, default 1800) and fails with the holder's pid when it does not finish.
#
# Environment: USERNS_NODE_DIR (state, default /var/lib/userns-labeler-node), USERNS_TEST_KEEP=1
# (keep the logs in $USERNS_NODE_DIR.logs-<time> after teardown), USERNS_NODE_IMAGES (directory
# of OCI archives to import, default target/images), USERNS_NODE_LOG (a log file of this script
# that `run` removes after a clean teardown).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
self="$here/cluster.sh"

# --- fixed layout -------------------------------------------------------------------------
D=${USERNS_NODE_DIR:-/var/lib/userns-labeler-node}
LOCK_FILE=/run/lock/userns-labeler-node.lock
BRIDGE=usernsbr0
POD_CIDR=10.213.0.0/24
GATEWAY=10.213.0.1 # the bridge's address: the API server listens here, reachable from pods
SERVICE_CIDR=10.214.0.0/24
KUBERNETES_SERVICE_IP=10.214.0.1
API_PORT=6443
ETCD_CLIENT=127.0.0.1:23790
ETCD_PEER=127.0.0.1:23800
SANDBOX_IMAGE=localhost/pause:userns-test
NFT_TABLE=kube-proxy
# Paths outside $D that the kubelet, containerd and CNI use whatever they are told; removed
# at cleanup when this cluster created them (recorded in $D/created-host-paths).
HOST_PATHS=(/var/lib/kubelet /run/containerd /var/log/containers /var/log/pods /var/lib/cni /run/nri)

START=$SECONDS
log() { printf '[cluster %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() {
    printf '[cluster] error: %s\n' "$*" >&2
    exit 1
}

node_name() { hostname | tr '[:upper:]' '[:lower:]'; }

# --- binaries -----------------------------------------------------------------------------
binaries() {
    local k8s_dir
    k8s_dir=$("$repo/tests/control-plane/build.sh" dir)
    # shellcheck source=../control-plane/versions.env
    . "$repo/tests/control-plane/versions.env"
    ETCD_BIN="$(dirname "$k8s_dir")/etcd-${USERNS_ETCD_VERSION:-$ETCD_VERSION}/etcd"
    APISERVER_BIN=$k8s_dir/kube-apiserver
    KUBECTL_BIN=$k8s_dir/kubectl
    KCM_BIN=$k8s_dir/kube-controller-manager
    SCHEDULER_BIN=$k8s_dir/kube-scheduler
    PROXY_BIN=$k8s_dir/kube-proxy
    KUBELET_BIN=$k8s_dir/kubelet
    CONTAINERD_BIN=$("$repo/tests/node/build.sh" path containerd) || die "containerd is not built: run 'make node'"
    CTR_BIN=$("$repo/tests/node/build.sh" path ctr) || die "ctr is not built: run 'make node'"
    SHIM_BIN=$("$repo/tests/node/build.sh" path containerd-shim-runc-v2) || die "the runc shim is not built: run 'make node'"
    RUNC_BIN=$("$repo/tests/node/build.sh" path runc) || die "runc is not built: run 'make node'"
    CNI_BIN_DIR=$("$repo/tests/node/build.sh" path cni) || die "the CNI plugins are not built: run 'make node'"
    local b
    for b in "$ETCD_BIN" "$APISERVER_BIN" "$KUBECTL_BIN" "$KCM_BIN" "$SCHEDULER_BIN" "$PROXY_BIN" "$KUBELET_BIN"; do
        [[ -x $b ]] || die "$b is missing: run 'make control-plane node'"
    done
}

# --- preflight ----------------------------------------------------------------------------
# Prints why this machine cannot run the node and exits 3; silent when it can.
preflight() {
    local why=()
    [[ $(id -u) == 0 ]] || why+=("not root (the kubelet, containerd and runc need root)")
    local release major minor
    release=$(uname -r)
    major=${release%%.*}
    minor=${release#*.}
    minor=${minor%%[!0-9]*}
    if ((major < 6 || (major == 6 && minor < 3))); then
        why+=("Linux $release: idmapped mounts on tmpfs (and user-namespaced pods with volumes) need >= 6.3")
    fi
    [[ -r /proc/self/uid_map ]] || why+=("no user namespaces in this kernel (/proc/self/uid_map)")
    if [[ -r /proc/sys/user/max_user_namespaces ]] && (($(cat /proc/sys/user/max_user_namespaces) == 0)); then
        why+=("user namespaces are disabled (user.max_user_namespaces = 0)")
    fi
    [[ -d /sys/fs/cgroup/pids || -f /sys/fs/cgroup/cgroup.controllers ]] || why+=("no cgroup pids controller under /sys/fs/cgroup")
    command -v nft >/dev/null || why+=("no nft binary (kube-proxy's nftables mode): run tests/node/packages.sh")
    command -v ip >/dev/null || why+=("no ip binary (iproute2)")
    if [[ $(id -u) == 0 ]] && ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        if ip link add userns-probe0 type bridge 2>/dev/null; then
            ip link del userns-probe0
        else
            why+=("cannot create a network bridge")
        fi
    fi
    if ((${#why[@]})); then
        printf 'this machine cannot run the real node: %s\n' "$(IFS=';'; echo "${why[*]}" | sed 's/;/; /g')" >&2
        exit 3
    fi
}

# --- certificates and configuration -------------------------------------------------------
gen_certs() {
    local p=$D/pki
    mkdir -p "$p"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=userns-labeler-node-ca" -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
    issue() { # <name> <subject> <extensions>
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
            -keyout "$p/$1.key" -out "$p/$1.csr" 2>/dev/null
        printf '%s\n' "$3" >"$p/$1.ext"
        openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
            -days 2 -extfile "$p/$1.ext" -out "$p/$1.crt" 2>/dev/null
    }
    local node
    node=$(node_name)
    issue apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$GATEWAY,IP:$KUBERNETES_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:$node,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    issue admin "/O=system:masters/CN=admin" "basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$p/sa.key" 2>/dev/null
    openssl pkey -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
    cat >"$D/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: userns-node
  cluster:
    server: https://$GATEWAY:$API_PORT
    certificate-authority: $p/ca.crt
users:
- name: admin
  user:
    client-certificate: $p/admin.crt
    client-key: $p/admin.key
contexts:
- name: userns-node
  context: {cluster: userns-node, user: admin}
current-context: userns-node
EOF
}

write_configs() {
    local node=$1
    mkdir -p "$D"/{cni/net.d,cni/ipam,containerd/tmp,runc,kubelet,pod-logs,logs,pids,cmd}
    cat >"$D/cni/net.d/10-userns.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "userns-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$D/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
    # restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so runc cannot lower
    # oom_score_adj below containerd's own (the pause container asks for -998).
    cat >"$D/containerd/config.toml" <<EOF
version = 3
root = "$D/containerd/root"
state = "$D/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "$D/containerd/containerd.sock"

[ttrpc]
  address = "$D/containerd/containerd.sock.ttrpc"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      disable_pause_image_pull = true
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$RUNC_BIN"
        Root = "$D/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$CNI_BIN_DIR"]
    conf_dir = "$D/cni/net.d"

[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$SANDBOX_IMAGE"
EOF
    cat >"$D/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine runs the cgroup v1 hybrid layout; kubelet >= 1.35 refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$D/containerd/containerd.sock
address: $GATEWAY
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# Anonymous, allow-all: acceptable only because the kubelet listens on this machine's own
# bridge and the cluster lives for one test run.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: $D/pki/ca.crt}
authorization: {mode: AlwaysAllow}
failSwapOn: false
podLogsDir: $D/pod-logs
# Imported images must never be collected (there is no registry to pull them again).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
resolvConf: /etc/resolv.conf
serializeImagePulls: false
EOF
    cat >"$D/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: $D/kubeconfig}
leaderElection: {leaderElect: false}
EOF
    cat >"$D/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $D/kubeconfig}
hostnameOverride: $node
clusterCIDR: $POD_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack table sizes and timeouts alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# command_of <component>: the component's command line, one argument per line.
command_of() {
    local node
    node=$(node_name)
    case $1 in
    etcd) printf '%s\n' "$ETCD_BIN" --name=node "--data-dir=$D/etcd" \
        "--listen-client-urls=http://$ETCD_CLIENT" "--advertise-client-urls=http://$ETCD_CLIENT" \
        "--listen-peer-urls=http://$ETCD_PEER" "--initial-advertise-peer-urls=http://$ETCD_PEER" \
        "--initial-cluster=node=http://$ETCD_PEER" --unsafe-no-fsync=true ;;
    kube-apiserver) printf '%s\n' "$APISERVER_BIN" "--etcd-servers=http://$ETCD_CLIENT" \
        "--bind-address=$GATEWAY" "--advertise-address=$GATEWAY" "--secure-port=$API_PORT" \
        "--service-cluster-ip-range=$SERVICE_CIDR" "--cert-dir=$D/pki/apiserver" \
        "--tls-cert-file=$D/pki/apiserver.crt" "--tls-private-key-file=$D/pki/apiserver.key" \
        "--client-ca-file=$D/pki/ca.crt" --authorization-mode=RBAC \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        "--service-account-key-file=$D/pki/sa.pub" "--service-account-signing-key-file=$D/pki/sa.key" \
        "--kubelet-client-certificate=$D/pki/admin.crt" "--kubelet-client-key=$D/pki/admin.key" \
        --kubelet-preferred-address-types=InternalIP --allow-privileged=true --profiling=false ;;
    kube-controller-manager) printf '%s\n' "$KCM_BIN" "--kubeconfig=$D/kubeconfig" \
        "--authentication-kubeconfig=$D/kubeconfig" "--authorization-kubeconfig=$D/kubeconfig" \
        "--service-account-private-key-file=$D/pki/sa.key" "--root-ca-file=$D/pki/ca.crt" \
        --leader-elect=false --bind-address=127.0.0.1 --secure-port=10257 \
        "--cert-dir=$D/pki/kcm" --use-service-account-credentials=false --profiling=false ;;
    kube-scheduler) printf '%s\n' "$SCHEDULER_BIN" "--config=$D/scheduler.yaml" \
        "--authentication-kubeconfig=$D/kubeconfig" "--authorization-kubeconfig=$D/kubeconfig" \
        --bind-address=127.0.0.1 --secure-port=10259 "--cert-dir=$D/pki/scheduler" --profiling=false ;;
    containerd) printf '%s\n' "$CONTAINERD_BIN" "--config=$D/containerd/config.toml" ;;
    kubelet) printf '%s\n' "$KUBELET_BIN" "--config=$D/kubelet/config.yaml" \
        "--kubeconfig=$D/kubeconfig" "--root-dir=$D/kubelet/root" "--cert-dir=$D/kubelet/pki" \
        "--node-ip=$GATEWAY" "--hostname-override=$node" ;;
    kube-proxy) printf '%s\n' "$PROXY_BIN" "--config=$D/kube-proxy.yaml" ;;
    *) die "unknown component '$1'" ;;
    esac
}
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)

# --- processes ----------------------------------------------------------------------------
alive() {
    local _pid _comm state
    [[ -n ${1:-} ]] || return 1
    read -r _pid _comm state _ 2>/dev/null <"/proc/$1/stat" || return 1
    [[ $state != Z ]]
}

pid_of() { cat "$D/pids/$1" 2>/dev/null || true; }

# start <component>: runs it in its own session (a Ctrl-C on the caller's terminal does not
# reach it), stdout+stderr appended to $D/logs/<component>.log, its pid in $D/pids/.
start() {
    local name=$1 args=()
    mapfile -t args < <(command_of "$name")
    printf '%q ' "${args[@]}" >"$D/cmd/$name"
    echo >>"$D/cmd/$name"
    local env=(PATH="$(dirname "$SHIM_BIN"):$(dirname "$RUNC_BIN"):$PATH")
    [[ $name != containerd ]] || env+=(TMPDIR="$D/containerd/tmp")
    env "${env[@]}" setsid "${args[@]}" >>"$D/logs/$name.log" 2>&1 </dev/null 9>&- &
    echo $! >"$D/pids/$name"
    log "started $name (pid $!)"
}

# stop <component> [grace seconds]: SIGTERM, then SIGKILL after the grace period.
stop() {
    local name=$1 grace=${2:-10} pid i
    pid=$(pid_of "$name")
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "$name still running ${grace}s after SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do alive "$pid" && sleep 0.1; done
        fi
    fi
    rm -f "$D/pids/$name"
}

kubectl() { "$KUBECTL_BIN" --kubeconfig="$D/kubeconfig" "$@"; }

# wait_for <what> <seconds> <command...>: retries the command until it succeeds.
wait_for() {
    local what=$1 timeout=$2 deadline=$((SECONDS + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        check_running || return 1
        sleep 0.3
    done
}

# check_running: fails (with the component's last log lines) when a started component died.
check_running() {
    local name pid
    for name in "${COMPONENTS[@]}"; do
        [[ -f $D/pids/$name ]] || continue
        pid=$(pid_of "$name")
        if ! alive "$pid"; then
            log "$name (pid $pid) exited; last lines of $D/logs/$name.log:"
            tail -n 30 "$D/logs/$name.log" >&2 || true
            return 1
        fi
    done
}

readyz() { [[ $(kubectl get --raw /readyz 2>/dev/null) == ok ]]; }
node_ready() {
    [[ $(kubectl get node "$(node_name)" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}
# (Output is captured before matching, here and below: under `set -o pipefail` a `producer |
# grep -q` fails whenever grep's early exit kills the producer with SIGPIPE; nft writes one line
# per write(2), so that happened to most polls and, under load, to every poll for a minute.)
proxy_ready() {
    local rules
    rules=$(nft list table ip "$NFT_TABLE" 2>/dev/null) && [[ $rules == *"$KUBERNETES_SERVICE_IP . tcp . 443 "* ]]
}
default_sa() { kubectl -n default get serviceaccount default; }
root_ca() { kubectl -n default get configmap kube-root-ca.crt; }

import_images() {
    local dir=${USERNS_NODE_IMAGES:-$repo/target/images} tar n=0
    for tar in "$dir"/*.tar; do
        [[ -f $tar ]] || continue
        # (ctr warns on every call that cgroup v1 support is deprecated; only failures matter)
        "$CTR_BIN" --address "$D/containerd/containerd.sock" -n k8s.io images import --local "$tar" >/dev/null 2>"$D/logs/ctr-import.log" ||
            die "ctr images import $tar failed: $(grep -v DEPRECATION "$D/logs/ctr-import.log")"
        n=$((n + 1))
    done
    local images
    images=$("$CTR_BIN" --address "$D/containerd/containerd.sock" -n k8s.io images ls -q 2>/dev/null)
    grep -qx "$SANDBOX_IMAGE" <<<"$images" ||
        die "the sandbox image $SANDBOX_IMAGE is not among the images imported from $dir: run 'make test-images'"
    log "imported $n image archive(s) from $dir"
}

# --- bring-up -----------------------------------------------------------------------------
bring_up() {
    local node
    node=$(node_name)
    binaries
    mkdir -p "$D"
    record_host_paths
    gen_certs
    write_configs "$node"
    # The bridge exists before the API server starts, so that it can listen on the bridge's
    # address: the address pods reach through the `kubernetes` Service.
    ip link add "$BRIDGE" type bridge
    ip addr add "$GATEWAY/${POD_CIDR#*/}" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    if [[ -w /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
        cat /proc/sys/net/bridge/bridge-nf-call-iptables >"$D/bridge-nf-call-iptables.before"
        echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
    fi

    start etcd
    start kube-apiserver
    wait_for "kube-apiserver /readyz" 120 readyz
    start kube-controller-manager
    start kube-scheduler
    start containerd
    wait_for "containerd's socket" 60 "$CTR_BIN" --address "$D/containerd/containerd.sock" version
    import_images
    start kubelet
    start kube-proxy
    wait_for "node $node Ready" 120 node_ready
    wait_for "kube-proxy's rules for the kubernetes Service" 60 proxy_ready
    wait_for "the default ServiceAccount" 60 default_sa
    wait_for "the kube-root-ca.crt ConfigMap" 60 root_ca
    log "node $node ready in $((SECONDS - START))s: KUBECONFIG=$D/kubeconfig"
}

record_host_paths() {
    local p
    : >"$D/created-host-paths"
    for p in "${HOST_PATHS[@]}"; do
        [[ -e $p ]] || echo "$p" >>"$D/created-host-paths"
    done
}

# mounts_under <dir>: "<length>\t<mount point>\t<fstype>" for every mount at or below dir.
mounts_under() {
    awk -v d="$1" '{
        m = $5; gsub(/\\040/, " ", m)
        if (m != d && index(m, d "/") != 1) next
        for (i = 6; i <= NF; i++) if ($i == "-") { print length(m) "\t" m "\t" $(i + 1); next }
    }' /proc/self/mountinfo
}

# --- teardown -----------------------------------------------------------------------------
# The graceful path, then the crash path (which also runs alone after a crash).
teardown() {
    set +e
    log "stopping"
    stop kube-proxy 5
    stop kubelet 10
    if [[ -S $D/containerd/containerd.sock ]] && [[ -n ${CTR_BIN:-} ]]; then
        local task
        for task in $("$CTR_BIN" --address "$D/containerd/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
            "$CTR_BIN" --address "$D/containerd/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$task" >/dev/null 2>&1
        done
    fi
    stop containerd 10
    stop kube-scheduler 5
    stop kube-controller-manager 5
    stop kube-apiserver 10
    stop etcd 5
    cleanup_leftovers
}

# Kills every process in a kubepods cgroup, every shim of ours and every component whose pid
# file survived, unmounts everything under $D (deepest first), removes the kubepods cgroups,
# the bridge, kube-proxy's table and the host paths this cluster created. Idempotent.
cleanup_leftovers() {
    set +e
    local f pid name
    for f in "$D"/pids/*; do
        [[ -f $f ]] || continue
        pid=$(cat "$f")
        alive "$pid" && kill -KILL "$pid" 2>/dev/null
        rm -f "$f"
    done
    # Our shim binary only: a containerd of the machine's own keeps its shims.
    local shim_path=""
    [[ -n ${SHIM_BIN:-} ]] && shim_path=$(readlink -f "$SHIM_BIN")
    local round
    for round in 1 2 3; do
        local victims=()
        for f in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/unified/kubepods; do
            [[ -d $f ]] || continue
            while IFS= read -r pid; do victims+=("$pid"); done < <(find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null)
        done
        for f in /proc/[0-9]*/exe; do
            name=$(readlink "$f" 2>/dev/null) || continue
            pid=${f#/proc/}
            pid=${pid%/exe}
            if [[ $name == "$D"/* || (-n $shim_path && $name == "$shim_path") ]]; then
                victims+=("$pid")
            fi
        done
        ((${#victims[@]})) || break
        kill -KILL "${victims[@]}" 2>/dev/null
        sleep 0.3
    done

    # Mounts under $D, deepest first; FUSE ones with fusermount. A mountinfo line is
    # "id parent major:minor root mountpoint options [optional...] - fstype source ...".
    local mp fstype
    for round in 1 2 3; do
        mapfile -t mounts < <(mounts_under "$D" | sort -rn | cut -f2-)
        ((${#mounts[@]})) || break
        for f in "${mounts[@]}"; do
            mp=${f%$'\t'*}
            fstype=${f##*$'\t'}
            if [[ $fstype == fuse* ]]; then
                fusermount -u "$mp" 2>/dev/null || fusermount3 -u "$mp" 2>/dev/null
            fi
            umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null
        done
    done

    # kubepods cgroups, depth first, in every hierarchy.
    for f in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        [[ -d $f ]] && find "$f" -depth -type d -exec rmdir {} + 2>/dev/null
    done

    # Network: veths on our bridge, the bridge, kube-proxy's tables.
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        for name in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
            ip link del "$name" 2>/dev/null
        done
        ip link del "$BRIDGE" 2>/dev/null
    fi
    nft delete table ip "$NFT_TABLE" 2>/dev/null
    nft delete table ip6 "$NFT_TABLE" 2>/dev/null
    if [[ -f $D/bridge-nf-call-iptables.before ]]; then
        cat "$D/bridge-nf-call-iptables.before" >/proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null
    fi

    # Host paths this cluster created.
    if [[ -f $D/created-host-paths ]]; then
        while IFS= read -r f; do
            [[ -n $f ]] && rm -rf -- "$f"
        done <"$D/created-host-paths"
    fi

    # The state directory, only once nothing is mounted under it any more.
    if [[ -n $(mounts_under "$D") ]]; then
        log "mounts remain under $D; leaving it in place:"
        mounts_under "$D" | cut -f2 >&2
        return 1
    fi
    if [[ -d $D ]]; then
        if [[ ${USERNS_TEST_KEEP:-0} != 0 && -d $D/logs ]]; then
            local kept
            kept="$D.logs-$(date +%Y%m%d-%H%M%S)"
            cp -a "$D/logs" "$kept" && log "logs kept in $kept"
        fi
        rm -rf -- "$D"
    fi
    log "cleaned up"
}

# --- lock ---------------------------------------------------------------------------------
take_lock() {
    mkdir -p "$(dirname "$LOCK_FILE")"
    exec 9>>"$LOCK_FILE"
    if ! flock -n 9; then
        local wait=${USERNS_NODE_LOCK_WAIT:-1800}
        log "another cluster run holds $LOCK_FILE (supervisor pid $(cat "$LOCK_FILE.pid" 2>/dev/null || echo '?')); waiting up to ${wait}s"
        flock -w "$wait" 9 || die "the cluster lock $LOCK_FILE is still held after ${wait}s (pid $(cat "$LOCK_FILE.pid" 2>/dev/null || echo '?'))"
    fi
    echo $$ >"$LOCK_FILE.pid"
}

# --- commands -----------------------------------------------------------------------------
cmd_run() {
    local detached=${1:-}
    preflight
    take_lock
    binaries
    # A crashed earlier run: clean its leftovers first.
    if [[ -e $D ]] || ip link show "$BRIDGE" >/dev/null 2>&1; then
        log "leftovers of an earlier run found; cleaning up first"
        cleanup_leftovers || die "cannot clean up the leftovers of an earlier run in $D"
    fi
    mkdir -p "$D"
    echo $$ >"$D/supervisor.pid"
    STOPPING=0 READY=0
    on_stop() { # <exit status>
        ((STOPPING)) && return
        STOPPING=1
        trap '' TERM INT HUP
        ((READY)) || log "the cluster did not start (status $1); logs in $D/logs (kept with USERNS_TEST_KEEP=1):" \
            "$(tail -n 5 "$D"/logs/*.log 2>/dev/null)"
        teardown
        rm -f "$LOCK_FILE.pid"
        # The caller's log of this script (node.rs), once the run ended well.
        if [[ $1 == 0 && ${USERNS_TEST_KEEP:-0} == 0 && -n ${USERNS_NODE_LOG:-} ]]; then
            rm -f -- "$USERNS_NODE_LOG"
        fi
        exit "$1"
    }
    trap 'on_stop 0' TERM INT HUP
    trap 'on_stop $?' EXIT
    # set -e applies inside: any failing step ends the run, and the EXIT trap cleans up.
    bring_up
    READY=1
    echo "READY $D/kubeconfig $KUBECTL_BIN"
    if [[ $detached != detached ]]; then
        # stdin is a pipe from the caller (the test process): EOF means it has gone away.
        # (A background job's stdin is /dev/null unless given explicitly: hand it over as fd 3.)
        exec 3<&0
        (
            read -r -u 3 _ || true
            # Only while $$ is still this script (after a SIGKILL of the supervisor its pid
            # may be reused).
            if [[ $(tr '\0' ' ' <"/proc/$$/cmdline" 2>/dev/null) == *'cluster.sh run'* ]]; then
                kill -TERM $$ 2>/dev/null
            fi
        ) 9>&- &
        exec 3<&-
    fi
    exec </dev/null
    local reported=""
    while :; do
        sleep 1 &
        wait $! || true
        # Report (once) a component that died on its own; a restart by `cluster.sh restart`
        # replaces the pid file.
        local name pid
        for name in "${COMPONENTS[@]}"; do
            pid=$(pid_of "$name")
            if [[ -n $pid ]] && ! alive "$pid" && [[ $reported != *" $name:$pid"* ]] && [[ ! -f $D/restarting-$name ]]; then
                log "$name (pid $pid) exited on its own"
                reported+=" $name:$pid"
            fi
        done
    done
}

cmd_up() {
    local env_file=${CLUSTER_ENV:-$repo/target/cluster.env} out
    mkdir -p "$(dirname "$env_file")"
    out=$(mktemp)
    # The supervisor outlives this command: its own session, output to the log file.
    setsid bash "$self" run detached >"$out" 2>"${out}.log" </dev/null &
    UP_SUPERVISOR=$!
    # Until the cluster is ready this command owns the supervisor: interrupted (Ctrl-C, SIGTERM)
    # or failing, it stops it, so that a supervisor still waiting for the lock never starts a
    # cluster later that nobody takes down.
    abandon_up() {
        local i
        trap '' INT TERM HUP
        alive "$UP_SUPERVISOR" || return 0
        kill -TERM "$UP_SUPERVISOR" 2>/dev/null
        for ((i = 0; i < 600; i++)); do
            alive "$UP_SUPERVISOR" || return 0
            sleep 0.1
        done
        log "the supervisor (pid $UP_SUPERVISOR) did not stop within 60s"
    }
    trap abandon_up EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
    # Waiting for another run's lock does not count against the start-up time.
    local pid=$UP_SUPERVISOR deadline=$((SECONDS + ${USERNS_NODE_LOCK_WAIT:-1800} + 600)) told=0
    until grep -q '^READY ' "$out"; do
        if ! alive "$pid"; then
            cat "${out}.log" >&2
            die "the cluster did not start (output above)"
        fi
        if ((!told)) && grep -q 'another cluster run holds' "${out}.log"; then
            grep -m1 'another cluster run holds' "${out}.log" >&2
            told=1
        fi
        ((SECONDS < deadline)) || die "the cluster did not become ready in time; see ${out}.log"
        sleep 0.5
    done
    trap - EXIT INT TERM HUP
    local kubeconfig kubectl_bin
    read -r _ kubeconfig kubectl_bin <"$out"
    printf 'KUBECONFIG=%s\nKUBECTL=%s\n' "$kubeconfig" "$kubectl_bin" >"$env_file"
    log "cluster up (supervisor pid $pid, log ${out}.log); wrote $env_file"
    cat "$env_file"
}

cmd_down() {
    local pid i
    pid=$(cat "$D/supervisor.pid" 2>/dev/null || true)
    if alive "$pid"; then
        kill -TERM "$pid"
        for ((i = 0; i < 600; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        alive "$pid" && die "the supervisor (pid $pid) did not stop within 60s"
    fi
    if [[ -e $D ]] || ip link show "$BRIDGE" >/dev/null 2>&1; then
        # Leftovers of a crash are cleaned under the lock; while another run holds it, what is
        # there is that run's own (it cleans up a crashed predecessor itself when it starts).
        mkdir -p "$(dirname "$LOCK_FILE")"
        exec 9>>"$LOCK_FILE"
        if flock -n 9; then
            echo $$ >"$LOCK_FILE.pid"
            binaries 2>/dev/null || true
            cleanup_leftovers
        else
            log "another cluster run (supervisor pid $(cat "$LOCK_FILE.pid" 2>/dev/null || echo '?')) holds $LOCK_FILE: $D is its own; nothing to clean"
        fi
    fi
    rm -f "${CLUSTER_ENV:-$repo/target/cluster.env}"
    log "cluster down"
}

cmd_restart() {
    local name=$1
    [[ " ${COMPONENTS[*]} " == *" $name "* ]] || die "unknown component '$name' (one of: ${COMPONENTS[*]})"
    require_running
    binaries
    touch "$D/restarting-$name"
    stop "$name" 10
    start "$name"
    rm -f "$D/restarting-$name"
    if [[ $name == kube-apiserver ]]; then
        wait_for "kube-apiserver /readyz" 120 readyz || die "kube-apiserver did not come back"
    fi
}

# Fails unless a cluster's supervisor runs (its state directory alone is not enough).
require_running() {
    alive "$(cat "$D/supervisor.pid" 2>/dev/null)" || die "no cluster is running (start one with 'cluster.sh up' or 'make cluster')"
}

cmd_install() {
    require_running
    binaries
    local helm ref
    helm=$("$repo/tests/tools/build.sh" path helm)
    local images=${USERNS_NODE_IMAGES:-$repo/target/images}
    ref=$(cat "$images/userns-labeler.ref" 2>/dev/null) || die "no $images/userns-labeler.ref: run 'make image'"
    # The namespace enforces the restricted Pod Security level before the chart's pods exist.
    kubectl create namespace userns-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    kubectl label namespace userns-system --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
    "$helm" upgrade --install userns-labeler "$repo/deploy/helm/userns-labeler" \
        --kubeconfig "$D/kubeconfig" --namespace userns-system \
        --set tls.mode=self-signed --set "image.repository=${ref%:*}" --set "image.tag=${ref##*:}" \
        --set image.pullPolicy=Never --wait --timeout 5m "$@"
    [[ " $* " == *" webhook.enabled=false "* ]] && return 0
    # The rollout being done does not mean the API server reaches the new replica through the
    # Service yet (endpoints and kube-proxy follow); until it does, pods are admitted unchanged
    # (failurePolicy Ignore). With two replicas one decided dry-run pod can come from the one
    # that is reachable while the other is not yet: done once ten in a row come back decided
    # (as the tests' `decided_in_a_row`).
    local shell in_a_row=0 deadline=$((SECONDS + 60))
    shell=$(cat "$images/shell.ref" 2>/dev/null) || die "no $images/shell.ref: run 'make test-images'"
    while ((in_a_row < 10)); do
        if webhook_decides "$shell"; then
            in_a_row=$((in_a_row + 1))
            continue
        fi
        in_a_row=0
        ((SECONDS < deadline)) || die "the webhook did not decide ten dry-run pods in a row within 60 s of the install"
        sleep 0.25
    done
}

# webhook_decides <image>: whether a dry-run pod created in `default` carries a decision.
webhook_decides() {
    local annotations
    annotations=$(kubectl create --dry-run=server -n default -o jsonpath='{.metadata.annotations}' -f - 2>/dev/null <<EOF
{"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "webhook-probe-"},
 "spec": {"containers": [{"name": "c", "image": "$1", "command": ["true"]}]}}
EOF
    ) && [[ $annotations == *'/decision"'* ]]
}

main() {
    case "${1:-}" in
    run) cmd_run "${2:-}" ;;
    up) cmd_up ;;
    down) cmd_down ;;
    install) shift && cmd_install "$@" ;;
    restart) cmd_restart "${2:?component}" ;;
    cleanup)
        take_lock
        binaries 2>/dev/null || true
        cleanup_leftovers
        ;;
    preflight) preflight && echo "this machine can run the real node" ;;
    *) die "usage: cluster.sh run|up|down|install|restart <component>|cleanup|preflight" ;;
    esac
}

main "$@"
