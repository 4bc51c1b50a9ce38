#!/usr/bin/env bash
# Builds the real command-line tools the tests use besides the control plane
# (helm, the Kyverno CLI and Kyverno's admission server) from their Go modules, collects the CRDs of the
# projects our manifests refer to, and caches everything by version outside target/.
#
#   tests/tools/build.sh                          build what is missing (default)
#   tests/tools/build.sh path helm|kyverno|kyverno-server|crds
#                                                 print ONLY the absolute path on stdout,
#                                                 building that one thing first if missing
#   tests/tools/build.sh dir                      print the cache root
#
# What `path` prints:
#   helm     the helm binary
#   kyverno  the Kyverno CLI (kubectl-kyverno, installed under the name `kyverno`)
#   kyverno-server
#            Kyverno's admission controller (cmd/kyverno of the same module and
#            version as the CLI), run out of cluster by scripts/kyverno-server.sh
#            and crates/test-support/src/kyverno.rs
#   crds     a directory of CustomResourceDefinition YAML files (one CRD per file,
#            no templating) to apply with `kubectl apply --server-side -f DIR`:
#            Kyverno's (config/crds/ of its module), cert-manager's (deploy/crds/:
#            Certificate, CertificateRequest, Issuer, ClusterIssuer, Order, Challenge) and
#            prometheus-operator's ServiceMonitor, PodMonitor and PrometheusRule
#            (example/prometheus-operator-crd/).
#
# Versions: pinned in versions.env; USERNS_HELM_VERSION, USERNS_KYVERNO_VERSION,
# USERNS_CERT_MANAGER_VERSION and USERNS_PROMETHEUS_OPERATOR_VERSION select others
# (exact versions only).
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/userns-labeler/tools/
#   helm-<version>/helm             (+ wrapper/, the generated Go module it was built from)
#   kyverno-<version>/kyverno       (+ wrapper/)
#   kyverno-server-<version>/kyverno-server   (+ wrapper/)
#   crds-kyverno-<v>-cert-manager-<v>-prometheus-operator-<v>/*.yaml
# Each is rebuilt only when missing; binaries and the CRD directory are written
# under temporary names, smoke-tested and then renamed, so a failed or
# interrupted build never leaves a half-made entry behind.
#
# The wrappers: a Go module of our own that requires the tool's module and names
# its main package in a `tool` directive. Kyverno's go.mod has a replace
# directive (a fork of k8s.io/pod-security-admission) that would be ignored in a
# dependency, so the wrapper copies every non-local replace directive of that
# exact release's go.mod (read through `go mod download -json`, never typed
# here). Helm's go.mod has none today; the same code copies any it gains.
# Minimal version selection then resolves exactly the versions upstream
# resolved, and `go mod tidy` checks every download against sum.golang.org, so
# the generated wrapper is reproducible without being committed.
set -euo pipefail
# Let `die` inside $(...) stop the caller too (command substitutions do not
# inherit errexit otherwise).
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start_all=$SECONDS

log() { printf '[tools %4ds] %s\n' "$((SECONDS - start_all))" "$*" >&2; }
die() { printf '[tools] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=../build-common.sh
source "$here/../build-common.sh"

# shellcheck source=versions.env
. "$here/versions.env"
helm_version=${USERNS_HELM_VERSION:-$HELM_VERSION}
kyverno_version=${USERNS_KYVERNO_VERSION:-$KYVERNO_VERSION}
cert_manager_version=${USERNS_CERT_MANAGER_VERSION:-$CERT_MANAGER_VERSION}
prometheus_operator_version=${USERNS_PROMETHEUS_OPERATOR_VERSION:-$PROMETHEUS_OPERATOR_VERSION}

[[ $helm_version =~ ^v([34])\. ]] ||
    die "USERNS_HELM_VERSION='$helm_version' must be a helm v3.x.y or v4.x.y version (list: go list -m -versions helm.sh/helm/v3)"
helm_module=helm.sh/helm/v${BASH_REMATCH[1]}
exact_version USERNS_HELM_VERSION "$helm_version" "$helm_module"
exact_version USERNS_KYVERNO_VERSION "$kyverno_version" github.com/kyverno/kyverno
exact_version USERNS_CERT_MANAGER_VERSION "$cert_manager_version" github.com/cert-manager/cert-manager
exact_version USERNS_PROMETHEUS_OPERATOR_VERSION "$prometheus_operator_version" github.com/prometheus-operator/prometheus-operator
kyverno_module=github.com/kyverno/kyverno

cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/userns-labeler/tools
helm_dir=$cache_root/helm-$helm_version
kyverno_dir=$cache_root/kyverno-$kyverno_version
kyverno_server_dir=$cache_root/kyverno-server-$kyverno_version
crds_dir=$cache_root/crds-kyverno-$kyverno_version-cert-manager-$cert_manager_version-prometheus-operator-$prometheus_operator_version

# replace_lines <go.mod>: every replace directive of a go.mod, one per line,
# without the keyword, comments or indentation (block and single-line forms).
replace_lines() {
    awk '
        { sub(/\/\/.*/, "") }
        inblock && /^[[:space:]]*\)/ { inblock = 0; next }
        inblock { print; next }
        /^replace[[:space:]]*\(/ { inblock = 1; next }
        /^replace[[:space:]]/ { sub(/^replace[[:space:]]+/, ""); print }
    ' "$1" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' -e '/^$/d'
}

# gen_wrapper <dir> <module> <version> <main package>: writes a wrapper go.mod
# that builds <main package> of <module>@<version> with that release's own
# (non-local) replace directives, and tidies it.
gen_wrapper() {
    local dir=$1 module=$2 version=$3 pkg=$4 json gomod go_line replaces local_ones
    log "resolving $module@$version"
    json=$(download "$module" "$version")
    gomod=$(json_field "$json" GoMod)
    [[ -f $gomod ]] || die "no go.mod path in 'go mod download -json $module@$version'"
    go_line=$(sed -n 's/^go[[:space:]]\{1,\}\([0-9][0-9.]*\)[[:space:]]*$/\1/p' "$gomod" | head -1)
    [[ -n $go_line ]] || die "no go directive in $gomod"
    replaces=$(replace_lines "$gomod")
    # A replace by a local path points into upstream's source tree: it cannot be
    # reproduced from the module proxy, so refuse instead of building something else.
    local_ones=$(printf '%s\n' "$replaces" | awk -F'=>' 'NF == 2 { t = $2; sub(/^[[:space:]]+/, "", t); if (t ~ /^(\.\.?\/|\/)/) print }')
    [[ -z $local_ones ]] ||
        die "$module@$version's go.mod replaces modules by local paths, which a wrapper cannot reproduce: $local_ones"
    mkdir -p "$dir"
    {
        echo "// Code generated by tests/tools/build.sh from the go.mod of"
        echo "// $module@$version; DO NOT EDIT (delete this directory to regenerate)."
        echo
        echo "module userns-labeler/tools/$(basename "$pkg")"
        echo
        echo "go $go_line"
        echo
        echo "require $module $version"
        echo
        echo "tool $pkg"
        if [[ -n $replaces ]]; then
            echo
            echo "// Every replace directive of $module@$version's go.mod."
            echo "replace ("
            printf '\t%s\n' "$replaces" | sed 's/^\t\t*/\t/'
            echo ")"
        fi
    } >"$dir/go.mod.tmp"
    mv -f "$dir/go.mod.tmp" "$dir/go.mod"
    rm -f "$dir/go.sum"
    log "wrapper for $module@$version (go $go_line, $(printf '%s' "$replaces" | grep -c . || true) replace directive(s)): go mod tidy"
    (cd "$dir" && "$GO" mod tidy >&2) || {
        rm -f "$dir/go.sum"
        die "go mod tidy failed for the $module@$version wrapper in $dir; see the go output above"
    }
}

# wrapper_dir <cache dir> <module> <version> <main package>: a tidied wrapper
# for exactly this version, generated when missing or stale.
wrapper_dir() {
    local dir=$1/wrapper re_mod=${2//./\\.} re_ver=${3//./\\.}
    if ! grep -Eq "^require[[:space:]]+$re_mod[[:space:]]+$re_ver\$" "$dir/go.mod" 2>/dev/null || [[ ! -s $dir/go.sum ]]; then
        gen_wrapper "$dir" "$2" "$3" "$4"
    fi
    echo "$dir"
}

# build <module dir> <package> <output> <smoke-test function> [go build args...]:
# builds to a temporary name, runs the smoke test on it, then renames it.
build() {
    local moddir=$1 pkg=$2 out=$3 smoke=$4 t0=$SECONDS
    shift 4
    log "building $(basename "$out") ($pkg) ..."
    mkdir -p "$(dirname "$out")"
    local tmp="$out.tmp.$$"
    if ! (cd "$moddir" && CGO_ENABLED=0 "$GO" build -mod=readonly -trimpath -pgo=off "$@" -o "$tmp" "$pkg" >&2); then
        rm -f "$tmp"
        die "building $pkg failed (module $moddir); see the go output above"
    fi
    local why
    if ! why=$("$smoke" "$tmp" 2>&1); then
        rm -f "$tmp"
        die "the freshly built $(basename "$out") failed its smoke test: $why"
    fi
    mv -f "$tmp" "$out"
    log "built $out ($(du -h "$out" | cut -f1), $why) in $((SECONDS - t0))s"
}

# need_go: sets GO, once, for the make functions (not needed while everything is cached).
need_go() {
    [[ -n ${GO:-} ]] || GO=$(find_go "Go >= 1.26 to build helm and Kyverno for the tests")
}

# ---- helm ----

helm_done() { [[ -x $helm_dir/helm ]]; }

helm_smoke() {
    local got
    got=$("$1" version --template '{{.Version}}') || return 1
    [[ $got == "$helm_version" ]] || { echo "'helm version' reports '$got', expected $helm_version"; return 1; }
    echo "helm version $got"
}

make_helm() {
    need_go
    local moddir src client_go k8s_major k8s_minor ldflags pkgdir
    moddir=$(wrapper_dir "$helm_dir" "$helm_module" "$helm_version" "$helm_module/cmd/helm")
    src=$(module_dir "$helm_module" "$helm_version")
    ldflags="-s -w -X $helm_module/internal/version.version=$helm_version -X $helm_module/internal/version.gitTreeState=clean"
    # Helm's Makefile derives the Kubernetes version that `helm template` and
    # `helm lint` assume (.Capabilities.KubeVersion) from its client-go
    # (v0.Y.Z -> 1.Y); without these flags it would claim v1.20.0.
    client_go=$(cd "$moddir" && "$GO" list -m -f '{{.Version}}' k8s.io/client-go) ||
        die "cannot resolve k8s.io/client-go in $moddir"
    [[ $client_go =~ ^v0\.([0-9]+)\. ]] || die "unexpected k8s.io/client-go version '$client_go' in $moddir"
    k8s_major=1 k8s_minor=${BASH_REMATCH[1]}
    while IFS= read -r pkgdir; do
        ldflags+=" -X $helm_module/${pkgdir#"$src"/}.k8sVersionMajor=$k8s_major -X $helm_module/${pkgdir#"$src"/}.k8sVersionMinor=$k8s_minor"
    done < <(grep -lE '^[[:space:]]*k8sVersionMajor[[:space:]]*=' -r "$src/pkg" --include='*.go' --exclude='*_test.go' | xargs -r -n1 dirname | sort -u)
    build "$moddir" "$helm_module/cmd/helm" "$helm_dir/helm" helm_smoke -ldflags "$ldflags"
}

# ---- the Kyverno CLI ----

kyverno_done() { [[ -x $kyverno_dir/kyverno ]]; }

kyverno_smoke() {
    local out
    out=$("$1" version) || return 1
    grep -q "Version: $kyverno_version\$" <<<"$out" || { echo "'kyverno version' printed: $out"; return 1; }
    echo "kyverno version $kyverno_version"
}

make_kyverno() {
    need_go
    local moddir
    moddir=$(wrapper_dir "$kyverno_dir" "$kyverno_module" "$kyverno_version" "$kyverno_module/cmd/cli/kubectl-kyverno")
    # In a wrapper the main module is ours, so the version must be set explicitly
    # (Kyverno's Makefile does the same with BuildVersion).
    build "$moddir" "$kyverno_module/cmd/cli/kubectl-kyverno" "$kyverno_dir/kyverno" kyverno_smoke \
        -ldflags "-s -w -X $kyverno_module/pkg/version.BuildVersion=$kyverno_version"
}

# ---- the Kyverno admission server ----

kyverno_server_done() { [[ -x $kyverno_server_dir/kyverno-server ]]; }

# The server has no version flag: check that it starts far enough to print its
# flags, and that the binary was built from exactly the pinned module version
# (`go version -m` reads the build information Go embeds; a `tool` directive's
# module is listed as `mod`, a plain dependency as `dep`).
kyverno_server_smoke() {
    local help info
    help=$("$1" --help 2>&1) && [[ $help == *-serverIP* && $help == *-caSecretName* ]] ||
        { echo "'--help' did not list -serverIP and -caSecretName: $(head -5 <<<"$help")"; return 1; }
    info=$("$GO" version -m "$1") || return 1
    grep -Eq "^[[:space:]]*(mod|dep)[[:space:]]+$kyverno_module[[:space:]]+$kyverno_version([[:space:]]|\$)" <<<"$info" ||
        { echo "built from another $kyverno_module version: $(grep "$kyverno_module" <<<"$info" | head -2)"; return 1; }
    echo "kyverno admission server from $kyverno_module $kyverno_version"
}

make_kyverno_server() {
    need_go
    local moddir
    # Its own wrapper (another `tool` line), resolving the same versions as the
    # CLI's: both come from the go.mod of the same release.
    moddir=$(wrapper_dir "$kyverno_server_dir" "$kyverno_module" "$kyverno_version" "$kyverno_module/cmd/kyverno")
    build "$moddir" "$kyverno_module/cmd/kyverno" "$kyverno_server_dir/kyverno-server" kyverno_server_smoke \
        -ldflags "-s -w -X $kyverno_module/pkg/version.BuildVersion=$kyverno_version"
}

# ---- CRDs ----

crds_done() { [[ -d $crds_dir ]]; }

# copy_crds <source label> <destination dir> <files...>: copies CRD files under
# the name <label>--<file name>, stripping lines that are only Helm template
# directives; refuses files that are not plain CRDs afterwards.
copy_crds() {
    local label=$1 dest=$2 f name
    shift 2
    (($# > 0)) || die "no CRD files found for $label"
    for f in "$@"; do
        name=$label--$(basename "$f")
        grep -vE '^[[:space:]]*\{\{-?[^}]*-?\}\}[[:space:]]*$' "$f" >"$dest/$name"
        grep -q '{{' "$dest/$name" &&
            die "$f still has Helm templating inside YAML lines after stripping directive lines"
        grep -q '^kind: CustomResourceDefinition$' "$dest/$name" &&
            grep -q '^apiVersion: apiextensions.k8s.io/v1$' "$dest/$name" ||
            die "$f is not an apiextensions.k8s.io/v1 CustomResourceDefinition"
    done
}

make_crds() {
    need_go
    local t0=$SECONDS tmp="$crds_dir.tmp.$$" src
    log "collecting CRDs: kyverno $kyverno_version, cert-manager $cert_manager_version, prometheus-operator $prometheus_operator_version"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    src=$(module_dir "$kyverno_module" "$kyverno_version")
    copy_crds "kyverno-$kyverno_version" "$tmp" "$src"/config/crds/*/*.yaml
    src=$(module_dir github.com/cert-manager/cert-manager "$cert_manager_version")
    copy_crds "cert-manager-$cert_manager_version" "$tmp" "$src"/deploy/crds/*.yaml
    src=$(module_dir github.com/prometheus-operator/prometheus-operator "$prometheus_operator_version")
    copy_crds "prometheus-operator-$prometheus_operator_version" "$tmp" \
        "$src"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,podmonitors,prometheusrules}.yaml
    chmod -R u+w,go+r "$tmp"
    mv -T "$tmp" "$crds_dir"
    trap - EXIT
    log "collected $(find "$crds_dir" -name '*.yaml' | wc -l) CRDs into $crds_dir ($(du -sh "$crds_dir" | cut -f1)) in $((SECONDS - t0))s"
}

# Everything below runs from main, so bash has read the whole script before
# acting (editing the file during a long build cannot derail a running build).
main() {
    export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

    case "${1:-build}" in
    path)
        (($# == 2)) || die "usage: build.sh path helm|kyverno|kyverno-server|crds"
        # (No `locked ... && echo`: errexit does not apply inside an && list.)
        case $2 in
        helm)
            locked "$cache_root" "helm-$helm_version" helm_done make_helm
            echo "$helm_dir/helm"
            ;;
        kyverno)
            locked "$cache_root" "kyverno-$kyverno_version" kyverno_done make_kyverno
            echo "$kyverno_dir/kyverno"
            ;;
        kyverno-server)
            locked "$cache_root" "kyverno-server-$kyverno_version" kyverno_server_done make_kyverno_server
            echo "$kyverno_server_dir/kyverno-server"
            ;;
        crds)
            locked "$cache_root" "$(basename "$crds_dir")" crds_done make_crds
            echo "$crds_dir"
            ;;
        *) die "unknown tool '$2' (expected: helm, kyverno, kyverno-server, crds)" ;;
        esac
        exit 0
        ;;
    dir)
        echo "$cache_root"
        exit 0
        ;;
    build) ;;
    *) die "unknown command '$1' (expected: build, path helm|kyverno|kyverno-server|crds, dir)" ;;
    esac

    if helm_done && kyverno_done && kyverno_server_done && crds_done; then
        log "up to date: $helm_dir/helm, $kyverno_dir/kyverno, $kyverno_server_dir/kyverno-server, $crds_dir"
        exit 0
    fi
    need_go
    log "helm $helm_version, kyverno $kyverno_version, $("$GO" version), cache $cache_root"
    # The CRDs need downloads only; collect them first so a slow build does not delay them.
    locked "$cache_root" "$(basename "$crds_dir")" crds_done make_crds
    locked "$cache_root" "helm-$helm_version" helm_done make_helm
    locked "$cache_root" "kyverno-$kyverno_version" kyverno_done make_kyverno
    locked "$cache_root" "kyverno-server-$kyverno_version" kyverno_server_done make_kyverno_server
    log "done in $((SECONDS - start_all))s: $helm_dir/helm $kyverno_dir/kyverno $kyverno_server_dir/kyverno-server $crds_dir"
}

main "$@"
