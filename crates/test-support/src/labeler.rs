//! Running the real `userns-labeler run` binary against the test control plane, as a
//! least-privileged user bound only to the RBAC the Helm chart renders (the plain manifests
//! `deploy/manifests/userns-labeler.yaml`).
//!
//! Cargo tells only the root package's integration tests and benchmarks where it built the
//! binary, so they pass it in: `env!("CARGO_BIN_EXE_userns-labeler")`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams, ResourceExt};

use userns_labeler::webhook::MUTATE_PODS_PATH;

use crate::control_plane::ControlPlane;
use crate::repo_root;

/// The user the controller runs as in tests.
pub const USER: &str = "userns-labeler-under-test";

/// The plain manifests: the chart's rendering with default values.
pub const MANIFESTS: &str = "deploy/manifests/userns-labeler.yaml";

/// Installs the RBAC objects of [`MANIFESTS`] with the controller's namespace, binding its
/// roles to [`USER`] instead of the ServiceAccount. Returns a kubeconfig for that user.
pub async fn least_privileged_kubeconfig(
    cp: &ControlPlane,
    admin: &Client,
    namespace: &str,
) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join(MANIFESTS)).expect(MANIFESTS);
    install_rbac(admin, namespace, &text).await;
    cp.user_kubeconfig(USER, &[])
}

/// What the chart's self-signed mode grants the labeler (as [`USER`]): get, list, watch and
/// update of its own MutatingWebhookConfiguration `config`, by name, to keep its caBundle.
pub async fn grant_own_webhook_configuration(admin: &Client, config: &str) {
    let params = PatchParams::apply("userns-labeler-tests").force();
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": config},
        "rules": [{"apiGroups": ["admissionregistration.k8s.io"],
                   "resources": ["mutatingwebhookconfigurations"],
                   "resourceNames": [config], "verbs": ["get", "update", "list", "watch"]}],
    });
    Api::<ClusterRole>::all(admin.clone())
        .patch(config, &params, &Patch::Apply(&role))
        .await
        .unwrap_or_else(|e| panic!("ClusterRole {config}: {e}"));
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": config},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": config},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": USER}],
    });
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch(config, &params, &Patch::Apply(&binding))
        .await
        .unwrap_or_else(|e| panic!("ClusterRoleBinding {config}: {e}"));
}

/// A webhook `name` sending the pod CREATEs of `namespaces` to `url`, as the tests register the
/// labeler under test: by URL, `failurePolicy: Fail` (a webhook that cannot be reached fails the
/// test instead of hiding), a 10 s timeout, no opt-out selectors (the webhook itself must leave
/// opted-out pods alone) and no caBundle (the labeler writes its own self-signed CA; set
/// `client_config.ca_bundle` otherwise).
pub fn pods_webhook(name: &str, url: &str, namespaces: &[&str]) -> MutatingWebhook {
    MutatingWebhook {
        name: name.to_owned(),
        client_config: WebhookClientConfig {
            url: Some(url.to_owned()),
            ..Default::default()
        },
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec!["".into()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["pods".into()]),
            scope: Some("Namespaced".into()),
        }]),
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "In".into(),
                values: Some(namespaces.iter().map(|ns| ns.to_string()).collect()),
            }]),
            ..Default::default()
        }),
        failure_policy: Some("Fail".into()),
        side_effects: "None".into(),
        admission_review_versions: vec!["v1".into()],
        timeout_seconds: Some(10),
        ..Default::default()
    }
}

/// The MutatingWebhookConfiguration `name` holding `webhooks`.
pub fn webhook_configuration(
    name: &str,
    webhooks: Vec<MutatingWebhook>,
) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        webhooks: Some(webhooks),
    }
}

/// Creates `config`, or replaces the configuration of its name (keeping nothing of it).
pub async fn apply_webhook_configuration(admin: &Client, config: &MutatingWebhookConfiguration) {
    let name = config.name_any();
    let api = Api::<MutatingWebhookConfiguration>::all(admin.clone());
    let existing = api
        .get_opt(&name)
        .await
        .unwrap_or_else(|e| panic!("reading MutatingWebhookConfiguration {name}: {e}"));
    let written = match existing {
        None => api.create(&PostParams::default(), config).await,
        Some(existing) => {
            let mut config = config.clone();
            config.metadata.resource_version = existing.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &config).await
        }
    };
    written.unwrap_or_else(|e| panic!("writing MutatingWebhookConfiguration {name}: {e}"));
}

/// Installs the ClusterRoles, ClusterRoleBindings, Roles and RoleBindings among `manifests`
/// (other kinds are skipped), Roles in `namespace`, every binding's subject replaced by [`USER`].
pub async fn install_rbac(admin: &Client, namespace: &str, manifests: &str) {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(manifests).expect("the manifests parse");
    let params = PatchParams::apply("userns-labeler-tests").force();
    let mut installed = 0;
    for doc in documents.into_iter().filter(|d| !d.is_null()) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        if !matches!(
            kind.as_str(),
            "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        ) {
            continue;
        }
        installed += 1;
        let mut doc = doc;
        if doc["metadata"].get("namespace").is_some() {
            doc["metadata"]["namespace"] = namespace.into();
        }
        if let Some(subjects) = doc.get_mut("subjects").and_then(|s| s.as_array_mut()) {
            *subjects = vec![serde_json::json!({
                "kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": USER
            })];
        }
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        match kind.as_str() {
            "ClusterRole" => {
                Api::<ClusterRole>::all(admin.clone())
                    .patch(&name, &params, &Patch::Apply(&doc))
                    .await
                    .expect("ClusterRole");
            }
            "ClusterRoleBinding" => {
                Api::<ClusterRoleBinding>::all(admin.clone())
                    .patch(&name, &params, &Patch::Apply(&doc))
                    .await
                    .expect("ClusterRoleBinding");
            }
            "Role" => {
                Api::<Role>::namespaced(admin.clone(), namespace)
                    .patch(&name, &params, &Patch::Apply(&doc))
                    .await
                    .expect("Role");
            }
            "RoleBinding" => {
                Api::<RoleBinding>::namespaced(admin.clone(), namespace)
                    .patch(&name, &params, &Patch::Apply(&doc))
                    .await
                    .expect("RoleBinding");
            }
            _ => unreachable!("filtered above"),
        }
    }
    assert!(
        installed >= 4,
        "the manifests hold no complete RBAC ({installed} objects)"
    );
}

/// `127.0.0.1:<a port free now>`.
fn free_addr() -> String {
    format!("127.0.0.1:{}", crate::free_port())
}

/// A running `userns-labeler run` process. Killed on drop.
pub struct Labeler {
    child: Child,
    /// The admin server's plain-HTTP address, `127.0.0.1:<port>`.
    pub admin: String,
    /// The webhook's HTTPS address, `127.0.0.1:<port>`.
    pub webhook: String,
    /// The process' stdout and stderr.
    pub log: PathBuf,
}

impl Labeler {
    /// Routes the pod CREATEs of `namespaces` to this labeler's webhook: the configuration
    /// `config` (created, or replaced) holding one [`pods_webhook`]. The labeler writes its
    /// self-signed CA into it when started with `--webhook-config-name config`.
    pub async fn register_webhook(&self, admin: &Client, config: &str, namespaces: &[&str]) {
        let url = format!("https://{}{MUTATE_PODS_PATH}", self.webhook);
        let webhook = pods_webhook("pods.userns.io", &url, namespaces);
        apply_webhook_configuration(admin, &webhook_configuration(config, vec![webhook])).await;
    }

    /// Starts `binary` (the `userns-labeler` under test) and waits until `/readyz` answers 200.
    pub fn start(
        binary: impl AsRef<Path>,
        kubeconfig: &Path,
        namespace: &str,
        log_dir: &Path,
        identity: &str,
    ) -> Labeler {
        Labeler::start_with(binary, kubeconfig, namespace, log_dir, identity, &[])
    }

    /// [`Labeler::start`] with extra command-line arguments.
    pub fn start_with(
        binary: impl AsRef<Path>,
        kubeconfig: &Path,
        namespace: &str,
        log_dir: &Path,
        identity: &str,
        extra: &[&str],
    ) -> Labeler {
        let args = [&["--self-signed-tls"], extra].concat();
        let labeler = Labeler::spawn(binary, kubeconfig, namespace, log_dir, identity, &args);
        labeler.wait_ready(Duration::from_secs(30));
        labeler
    }

    /// Starts the binary with `args` (its TLS flags among them) on free loopback ports, or
    /// those `args` give with `--admin-addr`/`--webhook-addr`, without waiting for anything.
    pub fn spawn(
        binary: impl AsRef<Path>,
        kubeconfig: &Path,
        namespace: &str,
        log_dir: &Path,
        identity: &str,
        args: &[&str],
    ) -> Labeler {
        let given = |flag: &str| {
            let at = args.iter().position(|a| *a == flag)?;
            args.get(at + 1).map(|a| a.to_string())
        };
        let admin = given("--admin-addr").unwrap_or_else(free_addr);
        let webhook = given("--webhook-addr").unwrap_or_else(free_addr);
        let log = log_dir.join(format!(
            "labeler-{identity}-{}.log",
            admin.rsplit(':').next().unwrap()
        ));
        let out = File::create(&log).expect("log file");
        let mut command = Command::new(binary.as_ref());
        command.args(["run", "--kubeconfig"]).arg(kubeconfig).args([
            "--namespace",
            namespace,
            "--identity",
            identity,
        ]);
        if given("--admin-addr").is_none() {
            command.args(["--admin-addr", &admin]);
        }
        if given("--webhook-addr").is_none() {
            command.args(["--webhook-addr", &webhook]);
        }
        let child = command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("USERNS_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start userns-labeler");
        Labeler {
            child,
            admin,
            webhook,
            log,
        }
    }

    /// [`Labeler::start_with`], waiting only until the admin server answers `/livez` (for a
    /// replica that is not meant to become ready).
    pub fn start_unready(
        binary: impl AsRef<Path>,
        kubeconfig: &Path,
        namespace: &str,
        log_dir: &Path,
        identity: &str,
        extra: &[&str],
    ) -> Labeler {
        let args = [&["--self-signed-tls"], extra].concat();
        let labeler = Labeler::spawn(binary, kubeconfig, namespace, log_dir, identity, &args);
        let deadline = Instant::now() + Duration::from_secs(30);
        while labeler.get("/livez").is_none() {
            assert!(
                Instant::now() < deadline,
                "no /livez; log:\n{}",
                labeler.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        labeler
    }

    /// Waits until `/readyz` answers 200; panics with the log after `timeout`.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.get("/readyz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "userns-labeler not ready after {timeout:?} (/readyz: {:?}); log:\n{}",
                self.get("/readyz"),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A plain HTTP GET on the admin port: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(&self.admin).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.admin
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())?;
        Some((status, body))
    }

    /// The sum of a metric's samples whose line contains every filter string.
    pub fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        let (_, body) = self.get("/metrics").expect("metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && filters.iter().all(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no graceful shutdown, no lease release.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit on its own, for at most `timeout`, meanwhile asking
    /// `/readyz` every 50 ms: the exit status (`None`: still running) and whether `/readyz`
    /// ever answered 200.
    pub fn until_exit(&mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, bool) {
        let deadline = Instant::now() + timeout;
        let mut was_ready = false;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (Some(status), was_ready);
            }
            if Instant::now() > deadline {
                return (None, was_ready);
            }
            was_ready |= self.get("/readyz").is_some_and(|(status, _)| status == 200);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn stop(self) -> std::process::ExitStatus {
        self.sigterm();
        self.wait_exit()
    }

    /// Sends SIGTERM (a graceful shutdown) without waiting.
    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }

    /// Waits up to 20 s for the process to exit.
    pub fn wait_exit(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit 20 s after SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Labeler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!(
                "--- userns-labeler log (last {} lines) ---\n{}",
                tail.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the label `key` on `object`, if any.
pub fn label_of<K: ResourceExt>(object: &K, key: &str) -> Option<String> {
    object.labels().get(key).cloned()
}
