#!/usr/bin/env bash
# Builds the components of a real node (kubelet + containerd + runc + CNI plugins)
# from their Go modules, and caches them by version outside target/.
#
#   tests/node/build.sh              build what is missing (default); installs the
#                                    Debian packages it needs first (packages.sh)
#   tests/node/build.sh dir          print the cache directories, one per line
#   tests/node/build.sh path NAME    print ONLY the absolute path of one built thing on
#                                    stdout; exits non-zero with the reason when it is
#                                    not built (this command never builds)
#
# NAME: kubelet, kube-controller-manager, kube-scheduler, kube-proxy, containerd, ctr,
# containerd-shim-runc-v2, runc, cni (the CNI bin directory), bridge, host-local, loopback.
#
# Versions: pinned in ../control-plane/versions.env (the one pin file):
# K8S_VERSION, CONTAINERD_VERSION, RUNC_VERSION, CNI_PLUGINS_VERSION; USERNS_K8S_VERSION,
# USERNS_CONTAINERD_VERSION, USERNS_RUNC_VERSION and USERNS_CNI_PLUGINS_VERSION select
# others (exact versions only).
#
# Cache (${XDG_CACHE_HOME:-$HOME/.cache}/userns-labeler/):
#   control-plane/<k8s-version>/{kubelet,kube-controller-manager,kube-scheduler,kube-proxy}
#       beside kube-apiserver, from the same wrapper module (tests/control-plane/build.sh
#       wrapper), with the same flags: one `go build` for the four, so the packages they
#       share compile once
#   node/containerd-<v>/{containerd,ctr,containerd-shim-runc-v2}
#   node/runc-<v>/runc
#   node/cni-plugins-<v>/{bridge,host-local,loopback}
# Each component is rebuilt only when one of its files is missing. It is built
# into a temporary directory beside its final one, smoke-tested, then renamed
# into place, so a failed or interrupted build never leaves a half-built
# component visible; a lock file per component and version makes a second run
# wait for the first instead of building the same thing twice.
#
# containerd, runc and the CNI plugins are built inside a writable copy of their
# module's own source (from `go mod download -json`), with -mod=mod, so their own
# go.mod and go.sum (and any replace directives) apply exactly as upstream builds
# them; tags and ldflags follow their Makefiles.
set -euo pipefail
# Let `die` inside $(...) stop the caller too.
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start_all=$SECONDS

log() { printf '[node %4ds] %s\n' "$((SECONDS - start_all))" "$*" >&2; }
die() { printf '[node] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=../build-common.sh
source "$here/../build-common.sh"

# shellcheck source=../control-plane/versions.env
. "$here/../control-plane/versions.env"
k8s_version=${USERNS_K8S_VERSION:-$K8S_VERSION}
containerd_version=${USERNS_CONTAINERD_VERSION:-$CONTAINERD_VERSION}
runc_version=${USERNS_RUNC_VERSION:-$RUNC_VERSION}
cni_version=${USERNS_CNI_PLUGINS_VERSION:-$CNI_PLUGINS_VERSION}

containerd_module=github.com/containerd/containerd/v2
runc_module=github.com/opencontainers/runc
cni_module=github.com/containernetworking/plugins

exact_version USERNS_K8S_VERSION "$k8s_version" k8s.io/kubernetes
[[ $k8s_version =~ ^v1\.([0-9]+)\. ]] || die "USERNS_K8S_VERSION='$k8s_version' is not a v1.Y.Z version"
k8s_minor=${BASH_REMATCH[1]}
exact_version USERNS_CONTAINERD_VERSION "$containerd_version" "$containerd_module"
[[ $containerd_version == v2.* ]] ||
    die "USERNS_CONTAINERD_VERSION='$containerd_version': only containerd 2.x (module $containerd_module) is supported"
exact_version USERNS_RUNC_VERSION "$runc_version" "$runc_module"
exact_version USERNS_CNI_PLUGINS_VERSION "$cni_version" "$cni_module"

cache_base=${XDG_CACHE_HOME:-$HOME/.cache}/userns-labeler
k8s_dir=$cache_base/control-plane/$k8s_version
cache_root=$cache_base/node
containerd_dir=$cache_root/containerd-$containerd_version
runc_dir=$cache_root/runc-$runc_version
cni_dir=$cache_root/cni-plugins-$cni_version

k8s_binaries=(kubelet kube-controller-manager kube-scheduler kube-proxy)
containerd_binaries=(containerd ctr containerd-shim-runc-v2)
cni_plugins=(bridge host-local loopback)

# Where go_quiet (tests/build-common.sh) lists the modules Go downloads.
downloads_log=$cache_root/go-downloads.log

# all_present <dir> <names...>: every name is an executable in dir.
all_present() {
    local dir=$1 name
    shift
    for name in "$@"; do
        [[ -x $dir/$name ]] || return 1
    done
}

kubernetes_done() { all_present "$k8s_dir" "${k8s_binaries[@]}"; }
containerd_done() { all_present "$containerd_dir" "${containerd_binaries[@]}"; }
runc_done() { all_present "$runc_dir" runc; }
cni_done() { all_present "$cni_dir" "${cni_plugins[@]}"; }

# Temporary build directory of the component being built (removed on exit).
tmp=
cleanup_tmp() {
    if [[ -n $tmp && -e $tmp ]]; then
        chmod -R u+w "$tmp" 2>/dev/null || true
        rm -rf "$tmp"
    fi
}
trap cleanup_tmp EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# new_tmp <final dir>: a fresh temporary directory beside <final dir> (same
# file system, so the final rename is atomic), in $tmp. Called under the
# component's lock, so leftovers of killed runs (kill -9) can be removed here.
new_tmp() {
    local stale
    mkdir -p "$(dirname "$1")"
    for stale in "$(dirname "$1")/.$(basename "$1").tmp."*; do
        [[ -e $stale ]] || continue
        chmod -R u+w "$stale" 2>/dev/null || true
        rm -rf "$stale"
    done
    tmp=$(dirname "$1")/.$(basename "$1").tmp.$$
    mkdir -p "$tmp"
}

# source_copy <module> <version>: a writable copy of the module's source in $tmp/src
# (the module cache is read-only, and -mod=mod may have to write go.mod/go.sum).
source_copy() {
    local src
    src=$(module_dir "$1" "$2")
    cp -R "$src" "$tmp/src"
    chmod -R u+w "$tmp/src"
    echo "$tmp/src"
}

# install_dir <final dir>: smoke-tested binaries in $tmp/bin become <final dir>.
install_dir() {
    [[ ! -e $1 ]] || rm -rf "$1" # an incomplete directory (a file deleted by hand)
    mv -T "$tmp/bin" "$1"
    cleanup_tmp
    tmp=
}

# smoke <what> <command...>: runs a freshly built binary; prints its first line of output.
smoke() {
    local what=$1 out
    shift
    out=$("$@" 2>&1) || die "the freshly built $what failed its smoke test ($*): $out"
    printf '%s\n' "$out" | head -1
}

sizes() { # <dir> <names...>: "name size, name size, ..."
    local dir=$1 name out=
    shift
    for name in "$@"; do
        out+="${out:+, }$name $(du -h "$dir/$name" | cut -f1)"
    done
    echo "$out"
}

# ---- kubelet, kube-controller-manager, kube-scheduler, kube-proxy ----

make_kubernetes() {
    local t0=$SECONDS moddir ldflags p missing=() name pkgs=()
    for name in "${k8s_binaries[@]}"; do
        [[ -x $k8s_dir/$name ]] || missing+=("$name")
    done
    moddir=$("$here/../control-plane/build.sh" wrapper) ||
        die "no k8s.io/kubernetes@$k8s_version wrapper module (tests/control-plane/build.sh wrapper failed)"
    # The same flags as kube-apiserver in tests/control-plane/build.sh.
    ldflags="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor -X $p.gitTreeState=clean"
    done
    for name in "${missing[@]}"; do
        pkgs+=("k8s.io/kubernetes/cmd/$name")
    done
    log "building ${missing[*]} (k8s.io/kubernetes $k8s_version, one go build) ..."
    new_tmp "$k8s_dir"
    mkdir -p "$tmp/bin"
    (cd "$moddir" && CGO_ENABLED=0 go_quiet build -mod=readonly -trimpath -pgo=off \
        -tags selinux,notest -ldflags "$ldflags" -o "$tmp/bin/" "${pkgs[@]}") ||
        die "building ${missing[*]} failed (module $moddir); see the go output above"
    local v
    for name in "${missing[@]}"; do
        v=$(smoke "$name" "$tmp/bin/$name" --version)
        [[ $v == "Kubernetes $k8s_version" ]] ||
            die "the freshly built $name reports '$v', expected 'Kubernetes $k8s_version'"
    done
    # Each binary is renamed into place on its own (atomically); a run interrupted
    # between two renames rebuilds only the missing ones next time.
    mkdir -p "$k8s_dir"
    for name in "${missing[@]}"; do
        mv -f "$tmp/bin/$name" "$k8s_dir/$name"
    done
    cleanup_tmp
    tmp=
    log "built ${missing[*]} in $((SECONDS - t0))s: $k8s_dir ($(sizes "$k8s_dir" "${missing[@]}"))"
}

# ---- containerd, ctr, containerd-shim-runc-v2 ----

make_containerd() {
    local t0=$SECONDS src tags ldflags v
    log "building containerd $containerd_version ($containerd_module ./cmd/...) ..."
    new_tmp "$containerd_dir"
    src=$(source_copy "$containerd_module" "$containerd_version")
    # Tags: containerd's Makefile (urfave_cli_no_docs; osusergo netgo for static builds)
    # without the snapshotters this node does not use (btrfs, devmapper, zfs).
    tags="no_btrfs no_devmapper no_zfs urfave_cli_no_docs osusergo netgo"
    ldflags="-s -w -X $containerd_module/version.Version=$containerd_version -X $containerd_module/version.Package=$containerd_module"
    (cd "$src" && CGO_ENABLED=0 go_quiet build -mod=mod -trimpath -pgo=off -tags "$tags" \
        -ldflags "$ldflags" -o "$tmp/bin/" ./cmd/containerd ./cmd/ctr) ||
        die "building containerd and ctr failed (source copy $src); see the go output above"
    # The shim without gRPC, like the Makefile's SHIM_GO_BUILDTAGS (ttrpc only, smaller).
    (cd "$src" && CGO_ENABLED=0 go_quiet build -mod=mod -trimpath -pgo=off -tags "$tags no_grpc" \
        -ldflags "$ldflags" -o "$tmp/bin/" ./cmd/containerd-shim-runc-v2) ||
        die "building containerd-shim-runc-v2 failed (source copy $src); see the go output above"
    v=$(smoke containerd "$tmp/bin/containerd" --version)
    [[ $v == *" $containerd_version"* ]] || die "the freshly built containerd reports '$v', expected $containerd_version"
    smoke ctr "$tmp/bin/ctr" --version >/dev/null
    smoke containerd-shim-runc-v2 "$tmp/bin/containerd-shim-runc-v2" -v >/dev/null
    install_dir "$containerd_dir"
    log "built containerd in $((SECONDS - t0))s: $containerd_dir ($(sizes "$containerd_dir" "${containerd_binaries[@]}"))"
}

# ---- runc ----

make_runc() {
    local t0=$SECONDS src v
    # cgo is mandatory (libcontainer/nsenter); tag seccomp links libseccomp through pkg-config.
    command -v gcc >/dev/null 2>&1 || die "runc needs cgo: gcc not found (tests/node/packages.sh installs it)"
    pkg-config --exists libseccomp 2>/dev/null ||
        die "runc's seccomp support needs libseccomp-dev and pkg-config (tests/node/packages.sh installs them)"
    log "building runc $runc_version ($runc_module, cgo, seccomp) ..."
    new_tmp "$runc_dir"
    src=$(source_copy "$runc_module" "$runc_version")
    # runc's Makefile: BUILDTAGS "seccomp urfave_cli_no_docs libpathrs", minus libpathrs
    # (a Rust library that is not installed here; runc falls back to its Go
    # implementation), -buildmode=pie. Its version comes from the embedded VERSION
    # file; main.gitCommit (git describe) is left empty, there is no git checkout.
    (cd "$src" && CGO_ENABLED=1 go_quiet build -mod=mod -trimpath -pgo=off -buildmode=pie \
        -tags "seccomp urfave_cli_no_docs" -ldflags "-s -w" -o "$tmp/bin/runc" .) ||
        die "building runc failed (source copy $src); see the go output above"
    v=$(smoke runc "$tmp/bin/runc" --version)
    [[ $v == "runc version ${runc_version#v}" ]] || die "the freshly built runc reports '$v', expected runc version ${runc_version#v}"
    grep -q '^libseccomp: ' <<<"$("$tmp/bin/runc" --version)" ||
        die "the freshly built runc has no seccomp support ('runc --version' names no libseccomp)"
    install_dir "$runc_dir"
    log "built runc in $((SECONDS - t0))s: $runc_dir ($(sizes "$runc_dir" runc))"
}

# ---- CNI plugins ----

make_cni() {
    local t0=$SECONDS src name
    log "building CNI plugins ${cni_plugins[*]} $cni_version ($cni_module) ..."
    new_tmp "$cni_dir"
    src=$(source_copy "$cni_module" "$cni_version")
    (cd "$src" && CGO_ENABLED=0 go_quiet build -mod=mod -trimpath -pgo=off \
        -ldflags "-s -w -X $cni_module/pkg/utils/buildversion.BuildVersion=$cni_version" \
        -o "$tmp/bin/" ./plugins/main/bridge ./plugins/ipam/host-local ./plugins/main/loopback) ||
        die "building the CNI plugins failed (source copy $src); see the go output above"
    for name in "${cni_plugins[@]}"; do
        [[ $(smoke "$name" env CNI_COMMAND=VERSION "$tmp/bin/$name") == *supportedVersions* ]] ||
            die "the freshly built CNI plugin $name prints no supportedVersions for CNI_COMMAND=VERSION"
    done
    install_dir "$cni_dir"
    log "built CNI plugins in $((SECONDS - t0))s: $cni_dir ($(sizes "$cni_dir" "${cni_plugins[@]}"))"
}

# path_of <name>: prints the path of a built thing, or dies saying it is not built.
path_of() {
    local p
    case $1 in
    kubelet | kube-controller-manager | kube-scheduler | kube-proxy) p=$k8s_dir/$1 ;;
    containerd | ctr | containerd-shim-runc-v2) p=$containerd_dir/$1 ;;
    runc) p=$runc_dir/runc ;;
    bridge | host-local | loopback) p=$cni_dir/$1 ;;
    cni)
        cni_done || die "the CNI plugins $cni_version are not built ($cni_dir); run tests/node/build.sh (make node)"
        echo "$cni_dir"
        return
        ;;
    *) die "unknown name '$1' (expected: ${k8s_binaries[*]} ${containerd_binaries[*]} runc cni ${cni_plugins[*]})" ;;
    esac
    [[ -x $p ]] || die "$1 is not built ($p is missing); run tests/node/build.sh (make node)"
    echo "$p"
}

# Everything below runs from main, so bash has read the whole script before
# acting (editing the file during a long build cannot derail a running build).
main() {
    export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

    case "${1:-build}" in
    path)
        (($# == 2)) || die "usage: build.sh path NAME (kubelet, containerd, runc, cni, ...)"
        path_of "$2"
        exit 0
        ;;
    dir)
        printf '%s\n' "$k8s_dir" "$containerd_dir" "$runc_dir" "$cni_dir"
        exit 0
        ;;
    build) ;;
    *) die "unknown command '$1' (expected: build, dir, path NAME)" ;;
    esac

    if kubernetes_done && containerd_done && runc_done && cni_done; then
        log "up to date: kubernetes $k8s_version ($k8s_dir), containerd $containerd_version, runc $runc_version, CNI plugins $cni_version ($cache_root)"
        exit 0
    fi

    "$here/packages.sh"
    GO=$(find_go "Go >= 1.26 to build the node components")
    mkdir -p "$cache_root"
    : >"$downloads_log"
    log "kubernetes $k8s_version, containerd $containerd_version, runc $runc_version, CNI plugins $cni_version, $("$GO" version), cache $cache_root"

    # The quickest first, so a failure in one of them shows before the long builds.
    locked "$cache_root" "cni-plugins-$cni_version" cni_done make_cni
    locked "$cache_root" "runc-$runc_version" runc_done make_runc
    locked "$cache_root" "containerd-$containerd_version" containerd_done make_containerd
    locked "$cache_root" "kubernetes-$k8s_version" kubernetes_done make_kubernetes
    log "done in $((SECONDS - start_all))s"
}

main "$@"
