#!/usr/bin/env bash
# `make test-images`: the node tests' own images as OCI archives (scripts/oci-image.py), so a
# node without a registry can run pods. Into ${USERNS_IMAGES_DIR:-target/images}/, each with a
# .ref file holding its reference:
#
#   pause.tar  localhost/pause:userns-test   /pause, tests/node/images/pause.c built static; the
#                                            sandbox image (user 65535, as the upstream pause)
#   shell.tar  localhost/shell:userns-test   Debian's static busybox at /bin/busybox, /bin/sh and
#                                            the applets below as symlinks; /tmp; runs as root
#
# Usage: tests/node/images/build.sh [pause|shell]...   (default: both)
# Needs gcc with the static C library (libc6-dev) and busybox-static (/bin/busybox).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
images="${USERNS_IMAGES_DIR:-$root/target/images}"
oci_image=(python3 "$root/scripts/oci-image.py")
tag=userns-test

# What a test pod runs: print /proc/self/uid_map, write a file and stat it, sleep, fetch a URL.
applets=(
    '[' basename cat chmod chown cp cut date dd df dirname echo env false find grep head hostname
    id kill ln ls mkdir mount mv nc printf ps pwd readlink rm rmdir sed seq sh sha256sum sleep
    sort stat tail tee test timeout touch tr true uname uniq wc wget whoami xargs
)

mkdir -p "$images"
work="$(mktemp -d "$images/.test-images.XXXXXX")"
trap 'rm -rf "$work"' EXIT

printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/:/bin/false' \
    'nonroot:x:65532:65532:nonroot:/tmp:/bin/sh' >"$work/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$work/group"

build_pause() {
    command -v gcc >/dev/null || { echo "build.sh: gcc not found: apt-get install -y gcc libc6-dev" >&2; exit 1; }
    gcc -static -O2 -s -Wall -Wextra -Werror -o "$work/pause" "$here/pause.c"
    "${oci_image[@]}" -o "$images/pause.tar" --name "localhost/pause:$tag" \
        --file "$work/pause:/pause:0755" \
        --user 65535:65535 --entrypoint /pause
    echo "localhost/pause:$tag" >"$images/pause.ref"
}

build_shell() {
    local busybox=/bin/busybox
    if [[ ! -x "$busybox" ]] || [[ $(readelf -l "$busybox" 2>/dev/null) == *'program interpreter'* ]]; then
        echo "build.sh: no static $busybox; install it with: apt-get install -y busybox-static" >&2
        exit 1
    fi
    local links=()
    for applet in "${applets[@]}"; do
        links+=(--symlink "/bin/$applet:busybox")
    done
    "${oci_image[@]}" -o "$images/shell.tar" --name "localhost/shell:$tag" \
        --file "$busybox:/bin/busybox:0755" "${links[@]}" \
        --file "$work/passwd:/etc/passwd:0644" --file "$work/group:/etc/group:0644" \
        --dir /tmp:1777 --dir /root:0700 \
        --env PATH=/bin --cmd /bin/sh
    echo "localhost/shell:$tag" >"$images/shell.ref"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(pause shell)
for target in "${targets[@]}"; do
    case "$target" in
        pause) build_pause ;;
        shell) build_shell ;;
        *) echo "build.sh: unknown image '$target' (pause, shell)" >&2; exit 2 ;;
    esac
done
