# What the two demos share: scripts/demo.sh (the API-server demo) and scripts/demo-node.sh (the
# real node) source this file. They define `k` (kubectl against the demo's cluster) before
# calling the functions that use it.

# One line per step, with the seconds since the demo started; bold only on a terminal.
if [[ -t 1 ]]; then
    bold=$'\033[1m' plain=$'\033[0m'
else
    bold="" plain=""
fi
say() { printf '\n%s== [%3ds] %s%s\n' "$bold" "$SECONDS" "$*" "$plain"; }

# print_logs DIR: the last lines of every *.log in DIR, on stderr (a failed demo's evidence).
print_logs() {
    local log
    for log in "$1"/*.log; do
        [[ -f $log ]] || continue
        echo "----- last lines of $log -----" >&2
        tail -n 30 "$log" >&2
    done
}

# remove_work DIR: removes the demo's work directory, or with DEMO_KEEP_LOGS=1 says where it is.
remove_work() {
    if [[ ${DEMO_KEEP_LOGS:-0} == 1 ]]; then
        echo "logs kept in $1" >&2
    else
        rm -rf "$1"
    fi
}

# until_ok SECONDS WHAT COMMAND...: waits until COMMAND succeeds, or says what timed out.
until_ok() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "timed out after ${seconds}s waiting for $what" >&2
            return 1
        fi
        sleep 0.3
    done
}

# add_to_pods FILE LINES [SKIP]: FILE's YAML documents, each Pod with LINES (indented two
# spaces, newline-terminated) added first under `spec:`, unless the Pod matches the regex SKIP.
add_to_pods() {
    awk -v add="$2" -v skip="${3:-}" '
        function flush() {
            if (doc == "") return
            if (doc ~ /(^|\n)kind: Pod\n/ && (skip == "" || doc !~ skip))
                sub(/(^|\n)spec:\n/, "&" add, doc)
            printf "%s", doc
            doc = ""
        }
        /^---/ { flush(); print; next }
        { doc = doc $0 "\n" }
        END { flush() }
    ' "$1"
}

# until_claims_labelled: waits until the controller has labelled every claim.
until_claims_labelled() {
    unlabelled() {
        k get pvc -A -o "jsonpath={range .items[*]}{.metadata.labels.userns\.io/idmap-supported}{\"\n\"}{end}" |
            grep -c '^$' || true
    }
    labelled() { [[ $(unlabelled) == 0 ]]; }
    until_ok 60 "the controller to label every claim" labelled
}

# print_reasons: each pod's decision-reason annotation, pods without one left out.
print_reasons() {
    say "Why (the $PREFIX/decision-reason annotation)"
    k get pods -A --sort-by .metadata.namespace -o \
        "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}: {.metadata.annotations.userns\.io/decision-reason}{\"\n\"}{end}" |
        grep -v ': $' || true
}

# keeps_running: whether the cluster should stay up after the report (DEMO_WAIT, else whether
# stdin is a terminal).
keeps_running() {
    if [[ -n ${DEMO_WAIT:-} ]]; then
        [[ $DEMO_WAIT == 1 ]]
    else
        [[ -t 0 ]]
    fi
}
