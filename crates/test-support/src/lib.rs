//! Test support for userns-labeler, shared by the integration tests (`tests/`), the
//! benchmarks (`benches/`), the `make demo` control plane (`scripts/demo-control-plane.rs`)
//! and the library's unit tests:
//!
//! - [`control_plane`]: a real etcd and kube-apiserver on loopback (or an existing cluster),
//!   admin and per-user clients, a namespace per test, the servers' logs when a test fails;
//! - [`labeler`]: the `userns-labeler run` binary under test, as a least-privileged user;
//! - [`node`]: a real single-node cluster (kubelet, containerd, runc, kube-proxy; `tests/node/cluster.sh`)
//!   whose pods really run;
//! - [`webhook`]: webhook state without an API server, AdmissionReview builders and decoding,
//!   a small HTTPS client;
//! - [`fixtures`]: typed Kubernetes objects built from JSON, for table tests;
//! - [`cases`]: the table of pod cases shared by the webhook's and the Kyverno policies' tests
//!   (`tests/cases/pods.yaml`);
//! - [`generate`]: generated clusters (pods, claims, volumes) for scale tests and benchmarks;
//! - [`kyverno`]: Kyverno's real admission server, out of cluster against the control plane;
//! - [`measure`]: the benchmarks' figures (resident memory, CPU time, load, percentiles);
//! - [`tool`]: helm, the Kyverno CLI and server, and third-party CRDs built by `make tools`.
//!
//! Paths into the repository (`tests/control-plane/versions.env`, `tests/tools/build.sh`,
//! `deploy/`) are resolved from [`repo_root`], this crate's manifest directory two levels up.

#![warn(missing_docs)]

pub mod cases;
pub mod control_plane;
pub mod fixtures;
pub mod generate;
pub mod kyverno;
pub mod labeler;
pub mod measure;
pub mod node;
pub mod webhook;

use std::{
    collections::HashMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock},
};

/// The repository's root directory (this crate lives in `crates/test-support`).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/test-support lies two levels below the repository root")
}

/// An environment variable's value, unless unset or empty.
pub(crate) fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free loopback port")
        .port()
}

/// A tool built and cached by `tests/tools/build.sh` (`helm`, `kyverno`, `kyverno-server`, or `crds`, the
/// directory of CRDs): its path, built on first use. Fails loudly with the reason, never skips.
pub fn tool(name: &str) -> PathBuf {
    static PATHS: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut paths = PATHS.get_or_init(Default::default).lock().unwrap();
    if let Some(path) = paths.get(name) {
        return path.clone();
    }
    let script = repo_root().join("tests/tools/build.sh");
    let output = Command::new(&script)
        .args(["path", name])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "`tests/tools/build.sh path {name}` failed ({}): this test needs {name}; \
         run `make tools` (needs Go) and read its output",
        output.status
    );
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(path.exists(), "{name}: {} does not exist", path.display());
    paths.insert(name.to_owned(), path.clone());
    path
}
