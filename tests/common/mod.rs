//! Test support: a real, local Kubernetes control plane for integration tests.
//!
//! Every integration test binary that says `mod common;` can start one etcd and
//! one kube-apiserver on loopback (built by `make control-plane`, cached under
//! `${XDG_CACHE_HOME:-$HOME/.cache}/userns-labeler/control-plane/`) and talk to
//! them as a `system:masters` admin:
//!
//! ```ignore
//! let cp = common::shared();             // one control plane per test binary
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

#![allow(dead_code)] // each test binary uses its own subset of this module

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    future::Future,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The pins, read at compile time from the one file that holds them.
const VERSIONS_ENV: &str = include_str!("../control-plane/versions.env");

/// How long kube-apiserver and etcd get between `SIGTERM` and `SIGKILL`.
const STOP_GRACE_SECS: u32 = 5;
/// How long to wait for `/readyz` and the `default` namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Label put on every namespace made by [`ControlPlane::namespace`].
pub const TEST_NAMESPACE_LABEL: &str = "userns-labeler.test/created-by";

/// Default audit policy: one `Metadata` event per request, at `ResponseComplete`.
pub const DEFAULT_AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
";

fn pin(key: &str) -> String {
    VERSIONS_ENV
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("tests/control-plane/versions.env has no {key}="))
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// The Kubernetes version under test: `USERNS_K8S_VERSION`, else the pin.
pub fn k8s_version() -> String {
    env_nonempty("USERNS_K8S_VERSION").unwrap_or_else(|| pin("K8S_VERSION"))
}

/// The etcd version under test: `USERNS_ETCD_VERSION`, else the pin.
pub fn etcd_version() -> String {
    env_nonempty("USERNS_ETCD_VERSION").unwrap_or_else(|| pin("ETCD_VERSION"))
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/userns-labeler/control-plane`, as in `build.sh`.
pub fn cache_root() -> PathBuf {
    let base = env_nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env_nonempty("HOME").expect("neither XDG_CACHE_HOME nor HOME is set"))
                .join(".cache")
        });
    base.join("userns-labeler").join("control-plane")
}

/// The cached binaries of the versions under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
    pub etcd: PathBuf,
}

impl Binaries {
    /// Where `make control-plane` puts the binaries of the versions under test.
    pub fn expected() -> Self {
        let root = cache_root();
        let k8s = root.join(k8s_version());
        Binaries {
            kube_apiserver: k8s.join("kube-apiserver"),
            kubectl: k8s.join("kubectl"),
            etcd: root.join(format!("etcd-{}", etcd_version())).join("etcd"),
        }
    }

    /// The binaries, or a panic that says how to build them. Never skips.
    pub fn require() -> Self {
        let bins = Self::expected();
        let missing: Vec<String> = [&bins.kube_apiserver, &bins.kubectl, &bins.etcd]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            let knob = match (
                env_nonempty("USERNS_K8S_VERSION"),
                env_nonempty("USERNS_ETCD_VERSION"),
            ) {
                (None, None) => String::new(),
                (k, e) => {
                    let mut s = String::new();
                    if let Some(k) = k {
                        write!(s, "USERNS_K8S_VERSION={k} ").unwrap();
                    }
                    if let Some(e) = e {
                        write!(s, "USERNS_ETCD_VERSION={e} ").unwrap();
                    }
                    s
                }
            };
            panic!(
                "the test control plane (kubernetes {}, etcd {}) is not built: missing {}.\n\
                 Build it with `{knob}make control-plane` (tests/control-plane/build.sh; needs Go), \
                 or run the tests with `make test`, which builds it first. \
                 To test against an existing cluster instead, set USERNS_TEST_KUBECONFIG=/path/to/kubeconfig.",
                k8s_version(),
                etcd_version(),
                missing.join(", ")
            );
        }
        bins
    }
}

/// Installs rustls' ring provider as the process default (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

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

/// Builds a `kube::Client` from a kubeconfig file (current context).
pub async fn client_from_kubeconfig(path: &Path) -> Client {
    install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading kubeconfig {}: {e}", path.display()));
    Client::try_from(config).unwrap_or_else(|e| panic!("client for {}: {e}", path.display()))
}

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The harness' own certificate authority: signs the API server's serving
/// certificate, client certificates, and webhook serving certificates.
struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "userns-labeler test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(&self, mut params: CertificateParams) -> CertPair {
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a certificate");
        CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A serving certificate for DNS names and/or IP addresses.
    fn server_cert(&self, sans: &[&str]) -> CertPair {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            sans.first().copied().unwrap_or("server"),
        );
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*s).try_into().expect("valid DNS name")),
            })
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: Kubernetes reads the user from CN and groups from
    /// the O attributes. rcgen keeps one value per attribute type, so a second
    /// group goes under O's raw OID (2.5.4.10), which Go reads as O as well;
    /// more than two groups cannot be expressed.
    fn client_cert(&self, user: &str, groups: &[&str]) -> CertPair {
        assert!(
            groups.len() <= 2,
            "client certificates here carry at most two groups (O attributes), got {groups:?}"
        );
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        let organization = [
            DnType::OrganizationName,
            DnType::CustomDnType(vec![2, 5, 4, 10]),
        ];
        for (group, ty) in groups.iter().zip(organization) {
            params.distinguished_name.push(ty, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free loopback port")
        .port()
}

/// Quotes a string for bash.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn kubeconfig_yaml(
    server: &str,
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
    user: &str,
) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: userns-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: userns-test
  context:
    cluster: userns-test
    user: {user}
current-context: userns-test
",
        ca = ca_file.display(),
        cert = cert_file.display(),
        key = key_file.display(),
    )
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

struct StartFailure {
    message: String,
    port_clash: bool,
}

/// Files and processes of a local control plane.
struct Local {
    /// Our end of the supervisor's stdin: closing it stops everything.
    supervisor_stdin: Mutex<Option<ChildStdin>>,
    supervisor: Mutex<Child>,
    etcd_url: String,
    etcd_log: PathBuf,
    apiserver_log: PathBuf,
    supervisor_log: PathBuf,
    audit_log: Option<PathBuf>,
    kubectl: PathBuf,
}

impl Local {
    fn start(bins: &Binaries, opts: &Builder) -> Result<ControlPlane, StartFailure> {
        let keep = env_nonempty("USERNS_TEST_KEEP").is_some_and(|v| v != "0");
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .expect("creating a temporary directory")
            .keep();
        if keep {
            write_file(&dir.join("keep"), "USERNS_TEST_KEEP was set\n");
        }
        let path = |name: &str| dir.join(name);
        let started = Instant::now();
        let version = k8s_version();

        let (etcd_client_port, etcd_peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_client_port}");
        let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
        let server = format!("https://127.0.0.1:{api_port}");

        let ca = Ca::new();
        write_file(&path("ca.crt"), &ca.cert_pem);
        let serving = ca.server_cert(&["127.0.0.1", "localhost"]);
        write_file(&path("apiserver.crt"), &serving.cert_pem);
        write_file(&path("apiserver.key"), &serving.key_pem);
        let admin = ca.client_cert("admin", &["system:masters"]);
        write_file(&path("admin.crt"), &admin.cert_pem);
        write_file(&path("admin.key"), &admin.key_pem);
        let sa_key = KeyPair::generate().expect("service account key");
        write_file(&path("sa.key"), &sa_key.serialize_pem());
        write_file(&path("sa.pub"), &sa_key.public_key_pem());
        let kubeconfig = path("kubeconfig");
        write_file(
            &kubeconfig,
            &kubeconfig_yaml(
                &server,
                &path("ca.crt"),
                &path("admin.crt"),
                &path("admin.key"),
                "admin",
            ),
        );

        let mut etcd_cmd: Vec<String> = vec![
            bins.etcd.display().to_string(),
            "--name=default".into(),
            format!("--data-dir={}", path("etcd-data").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={etcd_peer}"),
            format!("--initial-advertise-peer-urls={etcd_peer}"),
            format!("--initial-cluster=default={etcd_peer}"),
            "--unsafe-no-fsync=true".into(),
        ];
        etcd_cmd.extend(opts.etcd_args.iter().cloned());

        let mut api_cmd: Vec<String> = vec![
            bins.kube_apiserver.display().to_string(),
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", path("apiserver-certs").display()),
            format!("--tls-cert-file={}", path("apiserver.crt").display()),
            format!("--tls-private-key-file={}", path("apiserver.key").display()),
            format!("--client-ca-file={}", path("ca.crt").display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={server}/"),
            format!("--service-account-key-file={}", path("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                path("sa.key").display()
            ),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--profiling=false".into(),
        ];
        if needs_userns_gate(&version) {
            api_cmd.push("--feature-gates=UserNamespacesSupport=true".into());
        }
        let audit_log = opts.audit_policy.as_ref().map(|policy| {
            write_file(&path("audit-policy.yaml"), policy);
            api_cmd.push(format!(
                "--audit-policy-file={}",
                path("audit-policy.yaml").display()
            ));
            api_cmd.push(format!("--audit-log-path={}", path("audit.log").display()));
            api_cmd.push("--audit-log-format=json".into());
            api_cmd.push("--audit-log-mode=blocking".into());
            path("audit.log")
        });
        api_cmd.extend(opts.apiserver_args.iter().cloned());

        let script = supervisor_script(&etcd_cmd, &api_cmd);
        write_file(&path("supervise.sh"), &script);
        let supervisor_log = path("supervisor.log");
        let log_file = fs::File::create(&supervisor_log).expect("supervisor log");
        let mut child = Command::new("bash")
            .arg(path("supervise.sh"))
            .arg(&dir)
            .arg(STOP_GRACE_SECS.to_string())
            .arg(if keep { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            // Own process group: a Ctrl-C on the terminal reaches only the test
            // process; the supervisor then stops the servers in order.
            .process_group(0)
            .spawn()
            .expect("starting the control plane supervisor (bash)");
        let stdin = child.stdin.take();

        let local = Local {
            supervisor_stdin: Mutex::new(stdin),
            supervisor: Mutex::new(child),
            etcd_url,
            etcd_log: path("etcd.log"),
            apiserver_log: path("kube-apiserver.log"),
            supervisor_log,
            audit_log,
            kubectl: bins.kubectl.clone(),
        };
        let cp = ControlPlane {
            inner: Arc::new(Inner {
                server,
                kubeconfig,
                dir,
                ca,
                version: version.clone(),
                local: Some(local),
                user_counter: AtomicU64::new(0),
                _cleanup: Mutex::new(None),
            }),
        };

        match block_on(wait_ready(&cp)) {
            Ok(()) => {
                eprintln!(
                    "control plane: kubernetes {version} ready at {} in {:.1}s (dir {})",
                    cp.server_url(),
                    started.elapsed().as_secs_f64(),
                    cp.dir().display()
                );
                Ok(cp)
            }
            Err(reason) => {
                let logs = cp.log_tail(log_lines());
                let port_clash = logs.contains("address already in use");
                let message = format!(
                    "the local control plane (kubernetes {version}) did not become ready: {reason}\n{logs}"
                );
                drop(cp); // stops whatever runs and removes the directory
                Err(StartFailure {
                    message,
                    port_clash,
                })
            }
        }
    }
}

/// Prefix of the local control planes' temporary directories.
const DIR_PREFIX: &str = "userns-cp-";

/// Removes temporary directories of earlier runs whose supervisor is gone
/// without having cleaned up (it was killed itself, e.g. by a job runner that
/// kills every process a command left behind). Directories of running
/// supervisors, and those kept with `USERNS_TEST_KEEP`, are left alone.
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry.file_name().to_string_lossy().starts_with(DIR_PREFIX);
        if !is_ours || path.join("keep").exists() {
            continue;
        }
        // Written by the supervisor once it runs; without it the directory
        // may belong to a control plane that is starting right now.
        let Ok(pid) = fs::read_to_string(path.join("supervisor.pid")) else {
            continue;
        };
        // The pid is ours only if that process still runs our script on this
        // directory (pids are reused).
        let alive = fs::read(format!("/proc/{}/cmdline", pid.trim()))
            .map(|cmdline| {
                let needle = path.as_os_str().as_encoded_bytes();
                cmdline.windows(needle.len()).any(|w| w == needle)
            })
            .unwrap_or(false);
        if !alive {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// `UserNamespacesSupport` is on by default from 1.33 (and locked from 1.36):
/// pass the gate only to older API servers, which otherwise drop `hostUsers`.
fn needs_userns_gate(version: &str) -> bool {
    let minor = version
        .strip_prefix("v1.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    matches!(minor, Some(m) if m <= 32)
}

/// The supervisor: starts both servers, then waits for EOF on its stdin (the
/// test process went away or dropped the control plane) or for a server to
/// exit, and stops kube-apiserver before etcd.
fn supervisor_script(etcd_cmd: &[String], api_cmd: &[String]) -> String {
    let quote = |cmd: &[String]| {
        cmd.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        r#"#!/usr/bin/env bash
# Generated by tests/common/mod.rs. Arguments: <dir> <grace seconds> <keep 0|1>.
set -u
dir=$1 grace=$2 keep=$3
sleeper=
etcd_cmd=({etcd})
api_cmd=({api})

exec 3<&0 </dev/null
"${{etcd_cmd[@]}}" >"$dir/etcd.log" 2>&1 3<&- &
etcd=$!
"${{api_cmd[@]}}" >"$dir/kube-apiserver.log" 2>&1 3<&- &
api=$!
echo "$$" >"$dir/supervisor.pid"
echo "supervisor $$: etcd pid $etcd, kube-apiserver pid $api"

alive() {{
    local _pid _comm state
    read -r _pid _comm state _ 2>/dev/null <"/proc/$1/stat" || return 1
    [[ $state != Z ]]
}}

stop() {{ # <pid> <name>
    local i
    kill -TERM "$1" 2>/dev/null || return 0
    for ((i = 0; i < grace * 10; i++)); do
        alive "$1" || break
        sleep 0.1
    done
    if alive "$1"; then
        echo "$2 still running ${{grace}}s after SIGTERM: SIGKILL"
        kill -KILL "$1" 2>/dev/null
    fi
    wait "$1" 2>/dev/null
    echo "$2 stopped"
}}

stop_all() {{
    stop "$api" kube-apiserver
    stop "$etcd" etcd
}}

on_eof() {{
    trap '' TERM INT HUP
    echo "stop requested"
    stop_all
    [[ -z $sleeper ]] || kill "$sleeper" 2>/dev/null
    [[ $keep == 1 ]] || rm -rf "$dir"
    exit 0
}}
trap on_eof TERM INT HUP

# Our stdin is a pipe from the test process: EOF means it has gone away.
( read -r -u 3 _; kill -TERM $$ ) &
exec 3<&-

wait -n "$etcd" "$api"
status=$?
if ! alive "$api"; then who=kube-apiserver; else who=etcd; fi
echo "$who exited on its own (status $status)" | tee "$dir/server-exited"
stop_all
# Keep the logs for the test process until it goes away.
while :; do
    sleep 3600 &
    sleeper=$!
    wait "$sleeper"
done
"#,
        etcd = quote(etcd_cmd),
        api = quote(api_cmd),
    )
}

async fn wait_ready(cp: &ControlPlane) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let exited = cp.dir().join("server-exited");
    let client = cp.client().await;
    let mut last_error = String::from("no answer yet");
    let mut readyz_ok = false;
    while Instant::now() < deadline {
        if let Ok(why) = fs::read_to_string(&exited) {
            return Err(why.trim().to_owned());
        }
        if let Some(local) = &cp.inner.local
            && let Ok(Some(status)) = local.supervisor.lock().unwrap().try_wait()
        {
            return Err(format!("the supervisor exited ({status})"));
        }
        if !readyz_ok {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => readyz_ok = true,
                Ok(body) => last_error = format!("/readyz: {body}"),
                Err(e) => last_error = format!("/readyz: {e}"),
            }
        }
        if readyz_ok {
            match Api::<Namespace>::all(client.clone())
                .get_opt("default")
                .await
            {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => last_error = "namespace default does not exist yet".into(),
                Err(e) => last_error = format!("get namespace default: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "timed out after {READY_TIMEOUT:?}; last: {last_error}"
    ))
}

fn log_lines() -> usize {
    env_nonempty("USERNS_TEST_LOG_LINES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// The last `lines` lines of a file (reads at most the last 256 KiB).
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("({} not readable)\n", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    let _ = file.seek(SeekFrom::Start(start));
    let mut text = String::new();
    let _ = BufReader::new(file).read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

struct Inner {
    server: String,
    kubeconfig: PathBuf,
    /// Our temporary directory (certificates, kubeconfigs, logs, etcd data).
    dir: PathBuf,
    ca: Ca,
    version: String,
    /// `None` for an external cluster (`USERNS_TEST_KUBECONFIG`).
    local: Option<Local>,
    user_counter: AtomicU64,
    /// External clusters: the pipe to the helper that removes `dir`.
    _cleanup: Mutex<Option<ChildStdin>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Some(local) = &self.local else { return };
        // Closing the pipe tells the supervisor to stop both servers.
        drop(local.supervisor_stdin.lock().unwrap().take());
        let mut child = local.supervisor.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(u64::from(STOP_GRACE_SECS) * 2 + 5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    // A supervisor stuck after a server exited on its own: it
                    // already stopped both servers.
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
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

    /// Creates a uniquely named namespace `<prefix>-<n>-<random>`. The returned
    /// guard prints the servers' logs if the test panics.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let suffix = format!(
            "{}-{:x}",
            COUNTER.fetch_add(1, Ordering::Relaxed),
            (nanos ^ std::process::id().rotate_left(16)) & 0xffffff
        );
        let mut base = sanitize(prefix);
        base.truncate(63 - suffix.len() - 1);
        let name = format!("{}-{suffix}", base.trim_end_matches('-'));
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [(
                        TEST_NAMESPACE_LABEL.to_owned(),
                        "userns-labeler-tests".to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        TestNamespace {
            name,
            logs: self.logs_on_failure(),
        }
    }

    /// A guard that prints the last log lines of both servers when dropped
    /// during a panic (i.e. when the test fails).
    pub fn logs_on_failure(&self) -> FailureLogs {
        FailureLogs { cp: self.clone() }
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

    /// The last `lines` lines of each server's log, with headers.
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(local) = &self.inner.local else {
            return "(external cluster: no server logs)\n".into();
        };
        let mut out = String::new();
        if let Ok(why) = fs::read_to_string(self.dir().join("server-exited")) {
            writeln!(out, "!!! {}", why.trim()).unwrap();
        }
        for (name, path) in [
            ("supervisor", &local.supervisor_log),
            ("etcd", &local.etcd_log),
            ("kube-apiserver", &local.apiserver_log),
        ] {
            let n = if name == "kube-apiserver" {
                lines
            } else {
                lines / 3
            };
            writeln!(out, "----- last {n} lines of {} -----", path.display()).unwrap();
            out.push_str(&tail(path, n));
        }
        writeln!(
            out,
            "----- (set USERNS_TEST_KEEP=1 to keep {} after the test run) -----",
            self.dir().display()
        )
        .unwrap();
        out
    }
}

/// Makes a string usable inside a DNS label.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out = out.trim_matches('-').to_owned();
    if out.is_empty() { "test".into() } else { out }
}

/// Prints the servers' logs when dropped while the thread panics.
pub struct FailureLogs {
    cp: ControlPlane,
}

impl Drop for FailureLogs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== control plane logs (kubernetes {} at {}) =====\n{}",
                self.cp.version(),
                self.cp.server_url(),
                self.cp.log_tail(log_lines())
            );
        }
    }
}

/// A namespace made for one test; see [`ControlPlane::namespace`]. On an
/// external cluster it is deleted again when the test passes (locally there
/// is no namespace controller, so it stays).
pub struct TestNamespace {
    name: String,
    logs: FailureLogs,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let cp = &self.logs.cp;
        if cp.is_external() && !std::thread::panicking() {
            let name = self.name.clone();
            let cp = cp.clone();
            block_on(async move {
                let api = Api::<Namespace>::all(cp.client().await);
                if let Err(e) = api.delete(&name, &DeleteParams::background()).await {
                    eprintln!("deleting test namespace {name}: {e}");
                }
            });
        }
    }
}

/// A tool built and cached by `tests/tools/build.sh` (`helm`, `kyverno`, or `crds`, the
/// directory of CRDs): its path, built on first use. Fails loudly with the reason, never skips.
pub fn tool(name: &str) -> PathBuf {
    static PATHS: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut paths = PATHS.get_or_init(Default::default).lock().unwrap();
    if let Some(path) = paths.get(name) {
        return path.clone();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/build.sh");
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
