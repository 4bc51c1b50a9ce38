#!/usr/bin/env bash
# Makes sure a headless browser is there for the HTML report test (tests/report_cli.rs):
# Debian's `chromium`. Installs it with apt-get when missing (as root, or through sudo), and
# fails with the reason when it cannot: the test never skips. `make test` runs this first.
#
#   scripts/install-browser.sh          install if missing, print the browser's path
#   USERNS_CHROMIUM=/path/to/chromium   use that browser instead (checked, not installed)
set -euo pipefail

found() {
    "$1" --version >/dev/null 2>&1 || {
        echo "install-browser: $1 is there but does not run ($1 --version failed)" >&2
        exit 1
    }
    echo "$1"
    exit 0
}

if [[ -n ${USERNS_CHROMIUM:-} ]]; then
    [[ -x $USERNS_CHROMIUM ]] || {
        echo "install-browser: USERNS_CHROMIUM=$USERNS_CHROMIUM is not an executable" >&2
        exit 1
    }
    found "$USERNS_CHROMIUM"
fi
for name in chromium chromium-browser; do
    if path=$(command -v "$name"); then found "$path"; fi
done

if ! command -v apt-get >/dev/null; then
    echo "install-browser: chromium is missing and there is no apt-get to install it;" \
        "install Chromium and set USERNS_CHROMIUM to its path" >&2
    exit 1
fi
as_root=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || {
        echo "install-browser: chromium is missing; run as root or with sudo to install it" >&2
        exit 1
    }
    as_root=(sudo -n)
fi
echo "install-browser: installing Debian's chromium (about 20 s)" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq >&2
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >&2
path=$(command -v chromium) || {
    echo "install-browser: apt-get installed chromium, but it is not on PATH" >&2
    exit 1
}
found "$path"
