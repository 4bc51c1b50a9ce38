# userns-labeler developer and CI entry points.
#
#   make test            build the test control plane if needed, then run unit
#                        and integration tests (the one command CI runs)
#   make control-plane   build/cached kube-apiserver, kubectl, etcd for the tests
#   make tools           build/cached helm, the Kyverno CLI and third-party CRDs for the tests
#   make node            build/cached kubelet, containerd, runc and CNI plugins for a real node
#                        (installs the Debian packages it needs; tests/node/packages.sh)
#   make browser         install Debian's chromium for the HTML report test, if missing
#   make lint            rustfmt check + clippy with warnings as errors
#   make manifests       re-render deploy/manifests from the Helm chart (a test checks drift)
#   make image           the userns-labeler image as an OCI archive, target/images/userns-labeler.tar
#                        (and .ref), without a container engine: `ctr -n k8s.io images import` it
#   make test-images     the node tests' images (pause, shell) as OCI archives in target/images/
#   make cluster         a real single-node cluster (tests/node/cluster.sh up) with the chart
#                        installed by helm; writes KUBECONFIG= and KUBECTL= to target/cluster.env
#                        (or $$CLUSTER_ENV); needs root and Linux >= 6.3
#   make cluster-down    stop it and remove everything it created
#
# USERNS_K8S_VERSION=v1.33.13 make test   runs the same tests against another
# Kubernetes version (built on first use); USERNS_TEST_KUBECONFIG=/path makes
# the integration tests use an existing cluster instead of a local one.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all test unit-test control-plane tools node browser lint fmt clean-control-plane manifests cluster cluster-down

all: lint test

control-plane:
	tests/control-plane/build.sh

# helm, the Kyverno CLI and the CRD directory (tests/tools/build.sh path helm|kyverno|crds).
tools:
	tests/tools/build.sh

# kubelet, kube-controller-manager, kube-scheduler, kube-proxy, containerd, runc and the CNI
# plugins (tests/node/build.sh path kubelet|containerd|runc|cni|...).
node:
	tests/node/build.sh

# Debian's chromium for the HTML report test (scripts/install-browser.sh installs it if missing).
browser:
	scripts/install-browser.sh

# With USERNS_TEST_KUBECONFIG no local control plane is needed; the tools always are. The
# real-node tests (tests/real_node*.rs) need the node's components and the images; the HTML
# report test needs chromium.
# --workspace: also the test-support crate (crates/test-support) and its doc examples.
test: $(if $(USERNS_TEST_KUBECONFIG),,control-plane) tools browser node image test-images
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

# The one-command demo (scripts/demo.sh). Where `tests/node/cluster.sh preflight` passes (root,
# Linux >= 6.3) it builds `node image test-images` and helm itself and runs on a real node
# (scripts/demo-node.sh: the chart installed, examples/ decided, pods of its own running in user
# namespaces); elsewhere, or with DEMO_NODE=0, a local control plane, `userns-labeler run
# --self-signed-tls`, the webhook registered by URL, examples/ applied. Either way each claim's
# label and each pod's hostUsers and decision. Ctrl-C stops everything it started.
.PHONY: demo
demo: control-plane
	CARGO="$(CARGO)" scripts/demo.sh

# deploy/manifests/userns-labeler.yaml is the chart rendered with its defaults; commit the result.
manifests:
	scripts/render-manifests.sh

# The release binary stripped, with only the libraries it loads, user 65532: the Dockerfile's image
# as an OCI archive (scripts/image.sh, scripts/oci-image.py). USERNS_IMAGES_DIR moves the output.
.PHONY: image test-images
image:
	CARGO="$(CARGO)" scripts/image.sh

# localhost/pause:userns-test and localhost/shell:userns-test (tests/node/images/build.sh).
test-images:
	tests/node/packages.sh
	tests/node/images/build.sh

# The real node with the chart (self-signed TLS, two replicas, the local image); see the README.
cluster: control-plane tools node image test-images
	tests/node/cluster.sh up
	tests/node/cluster.sh install --set replicaCount=2

cluster-down:
	tests/node/cluster.sh down
