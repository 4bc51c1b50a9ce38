//! A real, local Kubernetes control plane for integration tests.
//!
//! Every integration test binary, benchmark or example can start one etcd and
//! one kube-apiserver on loopback (built by `make control-plane`, cached under
//! `${XDG_CACHE_HOME:-$HOME/.cache}/userns-labeler/control-plane/`) and talk to
//! them as a `system:masters` admin:
//!
//! ```ignore
//! use userns_labeler_test_support::control_plane;
//!
//! let cp = control_plane::shared();      // one control plane per test binary
//! let client = cp.client().await;        // admin kube::Client
//! let ns = cp.namespace("smoke").await;  // fresh namespace; prints server logs if the test fails
//! ```
//!
//! No controller-manager, scheduler or kubelet run: pods stay `Pending`, deleted
//! namespaces stay `Terminating`, nothing is garbage collected. Use a fresh
//! namespace per test.
//!
//! Both servers run under a small bash supervisor whose stdin is a pipe from
//! the test process. When the test process ends for any reason (normal exit,
//! panic, `SIGKILL`), the pipe closes and the supervisor stops kube-apiserver,
//! then etcd (`SIGTERM`, `SIGKILL` after a grace period), and removes the
//! temporary directory (kept with `USERNS_TEST_KEEP=1`).
//!
//! Environment:
//! - `USERNS_K8S_VERSION=v1.33.13` / `USERNS_ETCD_VERSION`: run other versions
//!   than the pins in `tests/control-plane/versions.env` (build them first with
//!   the same variables and `make control-plane`).
//! - `USERNS_TEST_KUBECONFIG=/path`: use that existing cluster; nothing is started.
//! - `USERNS_TEST_KEEP=1`: keep the temporary directory (certificates, logs).
//! - `USERNS_TEST_LOG_LINES=N`: how many log lines to print when a test fails.
//!
//! The files: `binaries` (versions under test and where `make control-plane` caches
//! them), `certificates` (the harness' CA, client certificates, kubeconfigs), `local` (the
//! etcd and kube-apiserver processes under their supervisor), `namespace` (a namespace per
//! test, and the servers' logs when it fails).

mod binaries;
mod certificates;
mod local;
mod namespace;

use std::{
    fs,
    future::Future,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use kube::{Client, config::Kubeconfig};

pub use binaries::{Binaries, cache_root, etcd_version, k8s_version};
use certificates::{Ca, kubeconfig_yaml};
pub use certificates::{CertPair, client_from_kubeconfig, install_crypto_provider};
use local::Local;
use namespace::sanitize;
pub use namespace::{FailureLogs, TEST_NAMESPACE_LABEL, TestNamespace};

use crate::env_nonempty;

/// Default audit policy: one `Metadata` event per request, at `ResponseComplete`.
pub const DEFAULT_AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
";

/// Runs a future to completion on a fresh runtime in a helper thread, so that
/// it works both inside and outside a test's tokio runtime.
fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(future)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Options for a local control plane; see [`ControlPlane::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Builder {
    audit_policy: Option<String>,
    apiserver_args: Vec<String>,
    etcd_args: Vec<String>,
}

impl Builder {
    /// Writes an audit log (JSON lines, [`DEFAULT_AUDIT_POLICY`]) readable with
    /// [`ControlPlane::audit_events`].
    pub fn audit_log(mut self, on: bool) -> Self {
        self.audit_policy = on.then(|| DEFAULT_AUDIT_POLICY.to_owned());
        self
    }

    /// Writes an audit log with this policy (YAML).
    pub fn audit_policy(mut self, policy_yaml: &str) -> Self {
        self.audit_policy = Some(policy_yaml.to_owned());
        self
    }

    /// An extra kube-apiserver flag, e.g. `--v=4`; later flags override earlier ones.
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    /// An extra etcd flag.
    pub fn etcd_arg(mut self, arg: impl Into<String>) -> Self {
        self.etcd_args.push(arg.into());
        self
    }

    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    /// Panics (with the servers' logs) when that fails. With
    /// `USERNS_TEST_KUBECONFIG` set, returns that cluster instead, and panics
    /// if options were set that only a local control plane can honour.
    pub fn start(self) -> ControlPlane {
        install_crypto_provider();
        if let Some(path) = external_kubeconfig() {
            assert!(
                self.audit_policy.is_none()
                    && self.apiserver_args.is_empty()
                    && self.etcd_args.is_empty(),
                "this test needs a local control plane (audit log or server flags), \
                 but USERNS_TEST_KUBECONFIG={} selects an existing cluster",
                path.display()
            );
            return ControlPlane::external(path);
        }
        let bins = Binaries::require();
        let mut attempt = 1;
        loop {
            match Local::start(&bins, &self) {
                Ok(cp) => return cp,
                Err(failure) if attempt < 3 && failure.port_clash => {
                    eprintln!(
                        "control plane: a port was taken meanwhile, retrying ({})",
                        failure.message
                    );
                    attempt += 1;
                }
                Err(failure) => panic!("{}", failure.message),
            }
        }
    }
}

/// `USERNS_TEST_KUBECONFIG`, when set.
pub fn external_kubeconfig() -> Option<PathBuf> {
    env_nonempty("USERNS_TEST_KUBECONFIG").map(PathBuf::from)
}

/// What the clones of a [`ControlPlane`] share.
struct Inner {
    server: String,
    kubeconfig: PathBuf,
    /// Our temporary directory (certificates, kubeconfigs, logs, etcd data).
    dir: PathBuf,
    ca: Ca,
    version: String,
    /// `None` for an external cluster (`USERNS_TEST_KUBECONFIG`). Dropping it
    /// stops the servers.
    local: Option<Local>,
    user_counter: AtomicU64,
    /// External clusters: the pipe to the helper that removes `dir`.
    _cleanup: Mutex<Option<ChildStdin>>,
}

/// A running control plane (or an external cluster). Cheap to clone; a local
/// one stops when the last clone is dropped or the test process ends.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The control plane shared by all tests of this test binary, started on first
/// use. Tests use separate namespaces ([`ControlPlane::namespace`]).
pub fn shared() -> &'static ControlPlane {
    let result = SHARED.get_or_init(|| {
        std::panic::catch_unwind(|| ControlPlane::builder().start()).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "starting the control plane panicked".into())
        })
    });
    match result {
        Ok(cp) => cp,
        Err(message) => panic!("{message}"),
    }
}

impl ControlPlane {
    /// Options for a control plane of its own (audit log, extra server flags);
    /// most tests use [`shared`] instead.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn external(kubeconfig: PathBuf) -> Self {
        let parsed = Kubeconfig::read_from(&kubeconfig)
            .unwrap_or_else(|e| panic!("USERNS_TEST_KUBECONFIG={}: {e}", kubeconfig.display()));
        let context = parsed
            .current_context
            .as_deref()
            .and_then(|name| parsed.contexts.iter().find(|c| c.name == name))
            .and_then(|c| c.context.as_ref())
            .unwrap_or_else(|| {
                panic!(
                    "USERNS_TEST_KUBECONFIG={}: no current context",
                    kubeconfig.display()
                )
            });
        let server = parsed
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .unwrap_or_else(|| {
                panic!(
                    "USERNS_TEST_KUBECONFIG={}: no server for the current context",
                    kubeconfig.display()
                )
            });
        let dir = tempfile::Builder::new()
            .prefix("userns-ext-")
            .tempdir()
            .expect("creating a temporary directory")
            .keep();
        // Statics are never dropped: a helper removes the directory once the
        // test process has gone away (EOF on its stdin).
        let cleanup = Command::new("bash")
            .args(["-c", r#"cat >/dev/null; rm -rf -- "$0""#])
            .arg(&dir)
            .stdin(Stdio::piped())
            .process_group(0)
            .spawn()
            .ok()
            .and_then(|mut child| child.stdin.take());
        eprintln!("control plane: using the existing cluster at {server} (USERNS_TEST_KUBECONFIG)");
        ControlPlane {
            inner: Arc::new(Inner {
                server,
                kubeconfig,
                dir,
                ca: Ca::new(),
                version: String::new(),
                local: None,
                user_counter: AtomicU64::new(0),
                _cleanup: Mutex::new(cleanup),
            }),
        }
    }

    /// True when this is an existing cluster from `USERNS_TEST_KUBECONFIG`.
    pub fn is_external(&self) -> bool {
        self.inner.local.is_none()
    }

    /// The Kubernetes version started (empty for an external cluster).
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// `https://127.0.0.1:<port>` (or the external cluster's server).
    pub fn server_url(&self) -> &str {
        &self.inner.server
    }

    /// An admin (`system:masters`) kubeconfig, usable by kubectl and child processes.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.inner.kubeconfig
    }

    /// The harness' temporary directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// PEM of the harness' CA. Locally it signed the API server's serving
    /// certificate and the client certificates; it also signs
    /// [`Self::issue_server_cert`] (use it as a webhook `caBundle`).
    pub fn ca_pem(&self) -> &str {
        &self.inner.ca.cert_pem
    }

    /// A serving certificate signed by [`Self::ca_pem`], e.g. for a webhook
    /// listening on 127.0.0.1 (`&["127.0.0.1", "localhost"]`).
    pub fn issue_server_cert(&self, sans: &[&str]) -> CertPair {
        self.inner.ca.server_cert(sans)
    }

    /// An admin client. Call it inside the test's tokio runtime (a client is
    /// bound to the runtime it was made in).
    pub async fn client(&self) -> Client {
        client_from_kubeconfig(&self.inner.kubeconfig).await
    }

    /// A kubeconfig for a client-certificate user (`CN=user`, `O=group` each, at
    /// most two groups), signed by the API server's client CA; bind the user or
    /// a group with RBAC to grant rights.
    /// Only for the local control plane (panics with USERNS_TEST_KUBECONFIG).
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        assert!(
            !self.is_external(),
            "client-certificate users need the local control plane's CA; \
             not available with USERNS_TEST_KUBECONFIG"
        );
        let n = self.inner.user_counter.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .inner
            .dir
            .join("users")
            .join(format!("{n}-{}", sanitize(user)));
        fs::create_dir_all(&dir).expect("user directory");
        let pair = self.inner.ca.client_cert(user, groups);
        write_file(&dir.join("client.crt"), &pair.cert_pem);
        write_file(&dir.join("client.key"), &pair.key_pem);
        let kubeconfig = dir.join("kubeconfig");
        write_file(
            &kubeconfig,
            &kubeconfig_yaml(
                &self.inner.server,
                &self.inner.dir.join("ca.crt"),
                &dir.join("client.crt"),
                &dir.join("client.key"),
                "user",
            ),
        );
        kubeconfig
    }

    /// A client for a client-certificate user; see [`Self::user_kubeconfig`].
    pub async fn user_client(&self, user: &str, groups: &[&str]) -> Client {
        client_from_kubeconfig(&self.user_kubeconfig(user, groups)).await
    }

    /// The kube-apiserver log (`None` for an external cluster).
    pub fn apiserver_log_path(&self) -> Option<&Path> {
        self.inner.local.as_ref().map(|l| l.apiserver_log.as_path())
    }

    /// The etcd log (`None` for an external cluster).
    pub fn etcd_log_path(&self) -> Option<&Path> {
        self.inner.local.as_ref().map(|l| l.etcd_log.as_path())
    }

    /// The whole kube-apiserver log so far (empty for an external cluster).
    pub fn apiserver_log(&self) -> String {
        self.apiserver_log_path()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// etcd's client URL (`None` for an external cluster).
    pub fn etcd_url(&self) -> Option<&str> {
        self.inner.local.as_ref().map(|l| l.etcd_url.as_str())
    }

    /// Compacts etcd's history up to its current revision and defragments its database, as the
    /// API server's own compaction (every 5 minutes) and an operator's defragmentation would: for
    /// benchmarks, so that one contender does not pay for the history the one before it left.
    /// Through etcd's JSON gateway on loopback. Panics on an external cluster or an etcd error.
    pub async fn compact_etcd(&self) {
        let url = self.etcd_url().expect("compact_etcd: no local etcd");
        let address = url.trim_start_matches("http://").trim_end_matches('/');
        let header = etcd_call(address, "/v3/kv/range", serde_json::json!({"key": "Lw=="})).await;
        let revision = header["header"]["revision"].clone();
        etcd_call(
            address,
            "/v3/kv/compaction",
            serde_json::json!({"revision": revision, "physical": true}),
        )
        .await;
        etcd_call(address, "/v3/maintenance/defragment", serde_json::json!({})).await;
    }

    /// The audit log, when started with [`Builder::audit_log`].
    pub fn audit_log_path(&self) -> Option<&Path> {
        self.inner
            .local
            .as_ref()
            .and_then(|l| l.audit_log.as_deref())
    }

    /// All audit events so far, one JSON object each (`audit.k8s.io/v1` `Event`).
    /// Panics when the control plane was started without an audit log.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let path = self
            .audit_log_path()
            .expect("start the control plane with ControlPlane::builder().audit_log(true)");
        let Ok(file) = fs::File::open(path) else {
            return Vec::new();
        };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str(&line).ok())
            .collect()
    }

    /// The kubectl binary under test (for an external cluster: the cached one
    /// if built, else `kubectl` from PATH).
    pub fn kubectl_path(&self) -> PathBuf {
        match &self.inner.local {
            Some(local) => local.kubectl.clone(),
            None => {
                let cached = Binaries::expected().kubectl;
                if cached.is_file() {
                    cached
                } else {
                    PathBuf::from("kubectl")
                }
            }
        }
    }

    /// A `kubectl` command with `KUBECONFIG` set to the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.kubectl_path());
        cmd.env("KUBECONFIG", self.kubeconfig_path());
        cmd
    }
}

/// One POST to etcd's JSON gateway at `address` (`host:port`, plain HTTP): the answer.
async fn etcd_call(address: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("etcd at {address}: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("etcd handshake");
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header("host", address)
        .header("content-type", "application/json")
        .body(Full::new(hyper::body::Bytes::from(body.to_string())))
        .unwrap();
    let response = sender.send_request(request).await.expect("etcd request");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("etcd answer")
        .to_bytes();
    assert!(
        status.is_success(),
        "etcd {path}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("etcd {path}: {e}"))
}
