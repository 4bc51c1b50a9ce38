#!/usr/bin/env bash
# Installs the Debian packages that building and running the real node need,
# only those that are missing (checked with dpkg-query; `apt-get update` runs
# once, and only when something is missing). tests/node/build.sh runs it first.
#
#   tests/node/packages.sh          install what is missing (needs root)
#   tests/node/packages.sh check    list what is missing; exit 1 if anything is
#
# Build:
#   libseccomp-dev, pkg-config   runc with the seccomp tag (cgo, links libseccomp)
#   gcc, libc6-dev               cgo for runc; a static pause binary (libc.a)
# Run time:
#   busybox-static               the shell test image (one static binary)
#   bindfs, fuse3                the FUSE volume fixture (fusermount3 to unmount it)
#   nftables, iptables           kube-proxy (nft / iptables-restore) and the
#                                kubelet's iptables canary chains
#   mount, util-linux            mount/umount/findmnt/losetup for kubelet volume mounts
#   iproute2                     `ip` to inspect and delete the CNI bridge at teardown
#   procps                       ps/kill for the teardown of leftover processes
# (runc and the CNI plugins need nothing else: namespaces, cgroups, netlink and
# conntrack are used through system calls.)
set -euo pipefail

start_all=$SECONDS
log() { printf '[node packages %4ds] %s\n' "$((SECONDS - start_all))" "$*" >&2; }
die() { printf '[node packages] error: %s\n' "$*" >&2; exit 1; }

packages=(
    libseccomp-dev pkg-config gcc libc6-dev
    busybox-static bindfs fuse3 nftables iptables
    mount util-linux iproute2 procps
)

command -v dpkg-query >/dev/null 2>&1 ||
    die "dpkg-query not found: this script installs Debian packages; install by hand: ${packages[*]}"

missing=()
for p in "${packages[@]}"; do
    # "install ok installed" only: a removed package leaves "deinstall ok config-files".
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done

if [[ ${1:-install} == check ]]; then
    ((${#missing[@]} == 0)) || { printf '%s\n' "${missing[@]}"; exit 1; }
    exit 0
fi
[[ ${1:-install} == install ]] || die "unknown command '$1' (expected: install, check)"

if ((${#missing[@]} == 0)); then
    exit 0
fi
((EUID == 0)) ||
    die "missing Debian packages: ${missing[*]}; installing them needs root (run: sudo $0, or apt-get install ${missing[*]})"

# Another apt or dpkg run (a parallel build, unattended upgrades) holds the
# locks: wait for it instead of failing.
apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
export DEBIAN_FRONTEND=noninteractive
# apt's and dpkg's progress goes to a log file, printed only when they fail.
apt_log=$(mktemp "${TMPDIR:-/tmp}/node-packages.XXXXXX.log")
trap 'rm -f "$apt_log"' EXIT
apt() {
    apt-get "${apt_opts[@]}" "$@" >"$apt_log" 2>&1 || {
        tail -n 30 "$apt_log" >&2
        die "apt-get $* failed (its last lines are above)"
    }
}
log "installing missing Debian packages: ${missing[*]}"
apt update
apt install -y --no-install-recommends "${missing[@]}"
for p in "${missing[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] ||
        die "$p is still not installed after apt-get install"
done
log "installed ${missing[*]} in $((SECONDS - start_all))s"
