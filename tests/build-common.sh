# Sourced by tests/control-plane/build.sh and tests/tools/build.sh (which define `die`).
# find_go <what it is for>: prints the path of the Go toolchain, from PATH or a usual install
# location, or dies naming what needs it.
find_go() {
    if command -v go >/dev/null 2>&1; then
        command -v go
        return
    fi
    local candidate
    for candidate in /usr/local/go/bin/go /usr/lib/go/bin/go "$HOME/go/bin/go" "$HOME/sdk/go/bin/go"; do
        if [[ -x $candidate ]]; then
            echo "$candidate"
            return
        fi
    done
    die "Go toolchain not found (looked on PATH and in /usr/local/go/bin): install $1"
}
