# userns-labeler developer and CI entry points.
#
#   make test            build the test control plane if needed, then run unit
#                        and integration tests (the one command CI runs)
#   make control-plane   build/cached kube-apiserver, kubectl, etcd for the tests
#   make tools           build/cached helm, the Kyverno CLI and third-party CRDs for the tests
#   make browser         install Debian's chromium for the HTML report test, if missing
#   make lint            rustfmt check + clippy with warnings as errors
#   make manifests       re-render deploy/manifests from the Helm chart (a test checks drift)
#
# USERNS_K8S_VERSION=v1.33.13 make test   runs the same tests against another
# Kubernetes version (built on first use); USERNS_TEST_KUBECONFIG=/path makes
# the integration tests use an existing cluster instead of a local one.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all test unit-test control-plane tools browser lint fmt clean-control-plane manifests

all: lint test

control-plane:
	tests/control-plane/build.sh

# helm, the Kyverno CLI and the CRD directory (tests/tools/build.sh path helm|kyverno|crds).
tools:
	tests/tools/build.sh

# Debian's chromium for the HTML report test (scripts/install-browser.sh installs it if missing).
browser:
	scripts/install-browser.sh

# With USERNS_TEST_KUBECONFIG no local control plane is needed; the tools always are.
# --workspace: also the test-support crate (crates/test-support) and its doc examples.
test: $(if $(USERNS_TEST_KUBECONFIG),,control-plane) tools browser
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

# Unit tests only (no control plane): the library and binary targets.
unit-test:
	$(CARGO) test --lib --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Removes the cached control-plane binaries of every version.
clean-control-plane:
	rm -rf "$${XDG_CACHE_HOME:-$$HOME/.cache}/userns-labeler/control-plane"

# The one-command demo (scripts/demo.sh): a local control plane, `userns-labeler run
# --self-signed-tls`, the webhook registered by URL, examples/ applied, then each claim's label
# and each pod's hostUsers and decision. Ctrl-C stops everything it started.
.PHONY: demo
demo: control-plane
	scripts/demo.sh

# deploy/manifests/userns-labeler.yaml is the chart rendered with its defaults; commit the result.
manifests:
	scripts/render-manifests.sh
