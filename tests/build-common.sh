# What the cache build scripts share: tests/control-plane/build.sh, tests/tools/build.sh and
# tests/node/build.sh source this file (each defines `log` and `die`, and `downloads_log` where
# it uses go_quiet).

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

# exact_version <variable> <value> <module>: dies unless <value> (from <variable>) is an exact
# version like v1.2.3.
exact_version() {
    [[ $2 =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
        die "$1='$2' is not an exact version like v1.2.3 (list: go list -m -versions $3)"
}

# download <module> <version>: downloads it into the module cache and prints the
# JSON of `go mod download -json`.
download() {
    local json
    if ! json=$("$GO" mod download -json "$1@$2" 2>&1); then
        die "cannot download $1@$2: $(printf '%s' "$json" | sed -n 's/.*"Error": "\(.*\)".*/\1/p' | sed 's/\\[nt]/ /g')${json:+ }$(printf '%s' "$json" | grep -v '^[[:space:]{}]' | head -3)"
    fi
    printf '%s\n' "$json"
}

# json_field <json> <key>: one string field of `go mod download -json` output.
json_field() {
    printf '%s\n' "$1" | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}\$/\1/p"
}

# module_dir <module> <version>: the extracted (read-only) module directory.
module_dir() {
    local json dir
    json=$(download "$1" "$2")
    dir=$(json_field "$json" Dir)
    [[ -d $dir ]] || die "no module directory in 'go mod download -json $1@$2'"
    echo "$dir"
}

# go_quiet <go args...>: runs $GO with its `go: downloading <module> <version>` lines (about 230
# on a cold module cache) written to $downloads_log and counted instead of printed: one progress
# line every 50 modules and one total. Every other line of Go's output passes through to stderr.
go_quiet() {
    mkdir -p "$(dirname "$downloads_log")"
    { "$GO" "$@" 2>&1 >&3 3>&- | count_downloads; } 3>&1
}
count_downloads() {
    local line n=0
    while IFS= read -r line; do
        if [[ $line == "go: downloading "* ]]; then
            printf '%s\n' "$line" >>"$downloads_log"
            n=$((n + 1))
            ((n % 50)) || log "  $n Go modules downloaded ..."
        else
            printf '%s\n' "$line" >&2
        fi
    done
    ((n == 0)) || log "  downloaded $n Go modules (listed in $downloads_log)"
}

# locked <lock dir> <name> <is-done function> <make function>: runs <make> unless <is-done>
# holds. Runs working on the same <name> are serialised by a lock file in <lock dir>: the
# second waits for the first, then finds the work done instead of repeating it. Without flock
# the work is only unserialised, never corrupted: every output is made under a temporary name
# and renamed into place.
locked() {
    local lock_dir=$1 lock_name=$2 lock_done=$3 lock_make=$4 lock_fd=
    # (Prefixed locals: the is-done and make functions may read their caller's variables.)
    "$lock_done" && return 0
    mkdir -p "$lock_dir"
    if command -v flock >/dev/null 2>&1; then
        exec {lock_fd}>"$lock_dir/.lock-$lock_name"
        if ! flock -n "$lock_fd"; then
            log "another run is making $lock_name; waiting for it"
            flock "$lock_fd"
        fi
        if "$lock_done"; then
            log "$lock_name was made meanwhile by another run"
            exec {lock_fd}>&-
            return 0
        fi
    fi
    "$lock_make"
    [[ -z $lock_fd ]] || exec {lock_fd}>&-
}
