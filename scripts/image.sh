#!/usr/bin/env bash
# `make image`: the userns-labeler container image as an OCI archive, without a container engine
# or a registry. The image the Dockerfile describes, built from this machine's release binary:
#
#   /usr/local/bin/userns-labeler   the release binary, stripped (--strip-unneeded)
#   the shared libraries ldd lists, at the paths it lists, and the dynamic loader at the binary's
#   PT_INTERP path; /etc/passwd and /etc/group (root, nonroot 65532), /etc/nsswitch.conf,
#   /tmp (1777), /root and /home/nonroot: nothing else, no shell
#   user 65532:65532, entrypoint ["/usr/local/bin/userns-labeler"]
#
# Writes ${USERNS_IMAGES_DIR:-target/images}/userns-labeler.tar and, beside it,
# userns-labeler.ref (the reference, one line): localhost/userns-labeler:<version in Cargo.toml>.
# Load it with `ctr -n k8s.io images import userns-labeler.tar` (see the README).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
images="${USERNS_IMAGES_DIR:-$root/target/images}"
cargo="${CARGO:-cargo}"

for tool in python3 strip ldd readelf; do
    command -v "$tool" >/dev/null || {
        echo "image.sh: $tool not found (python3; strip and readelf: binutils; ldd: libc-bin)" >&2
        exit 1
    }
done

version="$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["package"]["version"])')"
reference="localhost/userns-labeler:$version"

# The executable's path from cargo itself (honours CARGO_TARGET_DIR and .cargo/config).
binary="$("$cargo" build --release --locked --bin userns-labeler --message-format=json-render-diagnostics |
    python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable") \
            and message["target"]["name"] == "userns-labeler":
        print(message["executable"])
')"
[[ -x "$binary" ]] || { echo "image.sh: cargo reported no userns-labeler executable" >&2; exit 1; }

mkdir -p "$images"
work="$(mktemp -d "$images/.labeler.XXXXXX")"
trap 'rm -rf "$work"' EXIT

strip --strip-unneeded -o "$work/userns-labeler" "$binary"
"$work/userns-labeler" --version >/dev/null
"$work/userns-labeler" --help >/dev/null
echo "binary: $(stat -c %s "$binary") bytes, stripped $(stat -c %s "$work/userns-labeler") bytes"

# The loader at the exact path the binary asks for, and every library ldd resolves.
interpreter="$(readelf -l "$work/userns-labeler" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
[[ -n "$interpreter" ]] || { echo "image.sh: the binary has no PT_INTERP (static?)" >&2; exit 1; }
files=(--file "$(readlink -f "$interpreter"):$interpreter:0755")
if [[ $(ldd "$work/userns-labeler") == *'not found'* ]]; then
    echo "image.sh: unresolved libraries:" >&2
    ldd "$work/userns-labeler" >&2
    exit 1
fi
while read -r _ arrow library _; do
    [[ "$arrow" == "=>" && "$library" == /* ]] || continue
    files+=(--file "$(readlink -f "$library"):$library:0755")
done < <(ldd "$work/userns-labeler")

printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$work/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$work/group"
printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$work/nsswitch.conf"

python3 scripts/oci-image.py -o "$images/userns-labeler.tar" --name "$reference" \
    --file "$work/userns-labeler:/usr/local/bin/userns-labeler:0755" \
    "${files[@]}" \
    --file "$work/passwd:/etc/passwd:0644" \
    --file "$work/group:/etc/group:0644" \
    --file "$work/nsswitch.conf:/etc/nsswitch.conf:0644" \
    --dir /tmp:1777 --dir /root:0700 --dir /home/nonroot:0700:65532 \
    --user 65532:65532 \
    --env PATH=/usr/local/bin:/usr/bin:/bin \
    --entrypoint /usr/local/bin/userns-labeler \
    --label org.opencontainers.image.title=userns-labeler \
    --label "org.opencontainers.image.version=$version"
echo "$reference" >"$images/userns-labeler.ref"
echo "wrote $images/userns-labeler.tar ($(stat -c %s "$images/userns-labeler.tar") bytes) and userns-labeler.ref"
