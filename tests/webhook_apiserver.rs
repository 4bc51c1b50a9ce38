//! The webhook called by the real kube-apiserver (`userns_labeler_test_support::control_plane`)
//! at `https://127.0.0.1:<port>/mutate/pods`, with a caBundle and `failurePolicy: Fail` so that a
//! broken webhook fails the test instead of being skipped. The caches are the runtime's own
//! (`cache::start`), on a client whose every request is counted.
//!
//! Each test runs its own webhook server and registers its own MutatingWebhookConfiguration,
//! limited to its namespace by a `namespaceSelector`, so tests run in parallel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, PostParams};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};
use userns_labeler::cache;
use userns_labeler::cache::Caches;
use userns_labeler::capability::DriverTable;
use userns_labeler::keys::Keys;
use userns_labeler::webhook::{
    AdmissionSettings, Mode, Outcome, SelfSigned, ServerTls, WebhookArgs, WebhookMetrics,
    WebhookState, serve, serve_tls,
};
use userns_labeler_test_support::control_plane::{
    ControlPlane, TestNamespace, external_kubeconfig, install_crypto_provider,
};
use userns_labeler_test_support::labeler::{
    apply_webhook_configuration, pods_webhook, webhook_configuration,
};
use userns_labeler_test_support::webhook::{claim_volume, pod, with_volume};

const DECISION: &str = "userns.io/decision";
const REASON: &str = "userns.io/decision-reason";
/// The user a test's caches client authenticates as (locally), to count its requests in the
/// API server's audit log as well: one per test namespace.
fn cache_user(ns: &str) -> String {
    format!("userns-webhook-{ns}")
}
const WAIT: Duration = Duration::from_secs(30);

/// One control plane for this binary, with an audit log. Always the local one: the API server
/// has to reach the webhook in this process at `https://127.0.0.1:<port>`, which an existing
/// cluster (`USERNS_TEST_KUBECONFIG`) cannot.
fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        install_crypto_provider();
        assert!(
            external_kubeconfig().is_none(),
            "the webhook integration tests need the local control plane (its API server calls \
             the webhook at https://127.0.0.1:<port> in the test process); unset \
             USERNS_TEST_KUBECONFIG to run them"
        );
        ControlPlane::builder().audit_log(true).start()
    })
}

/// Every request a client sends, as `METHOD path?query`.
#[derive(Clone, Default)]
struct RequestLog(Arc<Mutex<Vec<String>>>);

impl RequestLog {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn since(&self, start: usize) -> Vec<String> {
        self.0.lock().unwrap()[start..].to_vec()
    }
}

impl<S> tower::Layer<S> for RequestLog {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            log: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    log: RequestLog,
}

impl<S, B> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.log
            .0
            .lock()
            .unwrap()
            .push(format!("{} {}", request.method(), request.uri()));
        self.inner.call(request)
    }
}

/// A client for the caches (as `user`) whose requests are all logged.
async fn counted_client(cp: &ControlPlane, user: &str) -> (Client, RequestLog) {
    let path: PathBuf = cp.user_kubeconfig(user, &["system:masters"]);
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let log = RequestLog::default();
    let client = ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&log)
        .build();
    (client, log)
}

/// Webhook state over the runtime's caches (synced when this returns), fed by a client that
/// authenticates as the namespace's cache user and logs every request; the client and its log.
async fn cached_state(
    cp: &ControlPlane,
    ns: &str,
    shutdown: &CancellationToken,
) -> (Arc<WebhookState>, Client, RequestLog) {
    let (client, requests) = counted_client(cp, &cache_user(ns)).await;
    let (caches, _subscriptions) = cache::start(&client, shutdown);
    tokio::time::timeout(WAIT, caches.wait_until_ready())
        .await
        .expect("caches synced");
    let table = userns_labeler::config::TableState::channel(DriverTable::defaults());
    let state = Arc::new(WebhookState {
        caches,
        table,
        keys: Keys::default(),
        metrics: WebhookMetrics::default(),
        nodes: Default::default(),
    });
    (state, client, requests)
}

/// A webhook server for one test namespace, registered with the API server.
struct Webhook {
    cp: &'static ControlPlane,
    ns: TestNamespace,
    admin: Client,
    caches: Caches,
    state: Arc<WebhookState>,
    requests: RequestLog,
    addr: SocketAddr,
    config_name: String,
    cert_dir: tempfile::TempDir,
    _stop: DropGuard,
}

impl Webhook {
    async fn start(prefix: &str, mode: Mode) -> Webhook {
        let cp = control_plane();
        let admin = cp.client().await;
        let ns = cp.namespace(prefix).await;
        let shutdown = CancellationToken::new();
        let (state, _, requests) = cached_state(cp, &ns, &shutdown).await;
        let caches = state.caches.clone();
        let cert_dir = tempfile::tempdir().unwrap();
        let pair = cp.issue_server_cert(&["127.0.0.1", "localhost"]);
        let (cert, key) = (
            cert_dir.path().join("tls.crt"),
            cert_dir.path().join("tls.key"),
        );
        std::fs::write(&cert, &pair.cert_pem).unwrap();
        std::fs::write(&key, &pair.key_pem).unwrap();
        let tls = ServerTls::from_files(&cert, &key, Duration::from_millis(200))
            .await
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = AdmissionSettings {
            mode,
            ..AdmissionSettings::default()
        };
        tokio::spawn(serve_tls(
            listener,
            tls,
            state.clone(),
            settings,
            shutdown.clone(),
        ));
        let config_name = format!("userns-test-{}", ns.name());
        let webhook = Webhook {
            cp,
            ns,
            admin,
            caches,
            state,
            requests,
            addr,
            config_name,
            cert_dir,
            _stop: shutdown.drop_guard(),
        };
        webhook.register(Some(cp.ca_pem())).await;
        webhook.wait_until_called().await;
        webhook
    }

    fn url(&self) -> String {
        format!("https://{}/mutate/pods", self.addr)
    }

    /// Creates (or replaces) this test's MutatingWebhookConfiguration.
    async fn register(&self, ca_pem: Option<&str>) {
        register(
            &self.admin,
            &self.config_name,
            &self.url(),
            &self.ns,
            ca_pem,
        )
        .await;
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// Server-side dry-run creates of a probe pod until the webhook's annotation shows: the
    /// API server loads webhook configurations asynchronously.
    async fn wait_until_called(&self) {
        let what = format!("the API server calling the webhook at {}", self.url());
        dry_run_until(&self.pods(), &what, |created| {
            annotation(created, DECISION).is_some()
        })
        .await;
    }

    async fn create_class(&self, suffix: &str, provisioner: &str) -> String {
        let name = format!("{}-{suffix}", self.ns.name());
        let class: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": name}, "provisioner": provisioner,
        }))
        .unwrap();
        Api::<StorageClass>::all(self.admin.clone())
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
        name
    }

    async fn create_claim(&self, name: &str, class: &str, modes: &[&str], block: bool) {
        let mut claim = json!({
            "metadata": {"name": name},
            "spec": {"accessModes": modes, "storageClassName": class,
                     "resources": {"requests": {"storage": "1Gi"}}},
        });
        if block {
            claim["spec"]["volumeMode"] = json!("Block");
        }
        let claim: PersistentVolumeClaim = serde_json::from_value(claim).unwrap();
        Api::<PersistentVolumeClaim>::namespaced(self.admin.clone(), &self.ns)
            .create(&PostParams::default(), &claim)
            .await
            .unwrap();
    }

    /// Waits until the caches hold these classes and claims (fixtures made before the pods).
    async fn wait_cached(&self, classes: &[&str], claims: &[&str]) {
        let started = Instant::now();
        loop {
            let have_classes = classes
                .iter()
                .all(|c| self.caches.classes.get(&ObjectRef::new(c)).is_some());
            let have_claims = claims.iter().all(|c| {
                self.caches
                    .claims
                    .get(&ObjectRef::new(c).within(&self.ns))
                    .is_some()
            });
            if have_classes && have_claims {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "caches never got {classes:?} {claims:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates the pod (for real) and reads it back from the API server.
    async fn create_pod(&self, pod: Value) -> Pod {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        let name = pod.metadata.name.clone().unwrap();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
        self.pods().get(&name).await.unwrap()
    }

    async fn unregister(&self) {
        let _ = Api::<MutatingWebhookConfiguration>::all(self.admin.clone())
            .delete(&self.config_name, &DeleteParams::default())
            .await;
    }
}

/// Server-side dry-run creates of a pod `probe` in `pods`' namespace, every 100 ms until one
/// comes back `done`; panics with the last answer after [`WAIT`].
async fn dry_run_until(pods: &Api<Pod>, what: &str, done: impl Fn(&Pod) -> bool) {
    let probe: Pod = serde_json::from_value(pod("probe")).unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let started = Instant::now();
    loop {
        let created = pods.create(&dry_run, &probe).await;
        if created.as_ref().is_ok_and(&done) {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}: {created:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn register(client: &Client, name: &str, url: &str, ns: &str, ca_pem: Option<&str>) {
    apply_webhook_configuration(client, &registration(name, url, ns, ca_pem)).await;
}

/// This test's MutatingWebhookConfiguration: pods of its namespace, sent to `url`, trusting
/// `ca_pem` if given.
fn registration(
    name: &str,
    url: &str,
    ns: &str,
    ca_pem: Option<&str>,
) -> MutatingWebhookConfiguration {
    let mut webhook = pods_webhook("pods.userns.io", url, &[ns]);
    webhook.client_config.ca_bundle = ca_pem.map(|pem| ByteString(pem.as_bytes().to_vec()));
    webhook.reinvocation_policy = Some("IfNeeded".into());
    webhook_configuration(name, vec![webhook])
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn host_users(pod: &Pod) -> Option<bool> {
    pod.spec.as_ref().and_then(|s| s.host_users)
}

fn set(mut pod: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    pod.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .insert(key.to_string(), value);
    pod
}

#[tokio::test]
async fn safe_pods_are_persisted_with_host_users_false() {
    let webhook = Webhook::start("wh-enabled", Mode::Enforce).await;
    let longhorn = webhook.create_class("longhorn", "driver.longhorn.io").await;
    let ebs = webhook.create_class("ebs", "ebs.csi.aws.com").await;
    webhook
        .create_claim("data", &longhorn, &["ReadWriteOnce"], false)
        .await;
    webhook.wait_cached(&[&longhorn, &ebs], &["data"]).await;

    let mut config_only = pod("config-only");
    for volume in [
        json!({"name": "config", "configMap": {"name": "settings"}}),
        json!({"name": "creds", "secret": {"secretName": "creds"}}),
        json!({"name": "scratch", "emptyDir": {}}),
    ] {
        config_only = with_volume(config_only, volume);
    }
    let ephemeral = with_volume(
        pod("ephemeral-ebs"),
        json!({"name": "work", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": ebs,
            "resources": {"requests": {"storage": "10Gi"}}}}}}),
    );
    for pod in [
        with_volume(pod("rwo-longhorn"), claim_volume("data", "data")),
        config_only,
        ephemeral,
    ] {
        let stored = webhook.create_pod(pod).await;
        let name = stored.metadata.name.as_deref().unwrap();
        assert_eq!(host_users(&stored), Some(false), "{name}: {stored:?}");
        assert_eq!(annotation(&stored, DECISION), Some("enabled"), "{name}");
        assert!(
            annotation(&stored, REASON)
                .unwrap()
                .starts_with("no host namespaces"),
            "{name}: {:?}",
            annotation(&stored, REASON)
        );
    }
    webhook.unregister().await;
}

#[tokio::test]
async fn unsafe_pods_are_persisted_unchanged_with_the_reason() {
    let webhook = Webhook::start("wh-skipped", Mode::Enforce).await;
    let longhorn = webhook.create_class("longhorn", "driver.longhorn.io").await;
    let nfs = webhook.create_class("nfs", "nfs.csi.k8s.io").await;
    let unknown = webhook.create_class("unknown", "storage.example.com").await;
    webhook
        .create_claim("raw", &longhorn, &["ReadWriteOnce"], true)
        .await;
    webhook
        .create_claim("shared", &longhorn, &["ReadWriteMany"], false)
        .await;
    webhook
        .create_claim("media", &nfs, &["ReadWriteMany"], false)
        .await;
    webhook
        .create_claim("odd", &unknown, &["ReadWriteOnce"], false)
        .await;
    webhook
        .wait_cached(
            &[&longhorn, &nfs, &unknown],
            &["raw", "shared", "media", "odd"],
        )
        .await;

    let cases: Vec<(&str, Value, Option<bool>)> = vec![
        (
            "HostNetwork",
            set(pod("host-network"), "/spec/hostNetwork", json!(true)),
            None,
        ),
        (
            "HostPID",
            set(pod("host-pid"), "/spec/hostPID", json!(true)),
            None,
        ),
        (
            "HostIPC",
            set(pod("host-ipc"), "/spec/hostIPC", json!(true)),
            None,
        ),
        (
            "HostUsersSet",
            set(pod("explicit-host-users"), "/spec/hostUsers", json!(true)),
            Some(true),
        ),
        (
            "HostPathForbidden",
            with_volume(
                pod("dev-host-path"),
                json!({"name": "usb", "hostPath": {"path": "/dev/ttyUSB0"}}),
            ),
            None,
        ),
        (
            "VolumeDevices",
            set(
                with_volume(pod("block-device"), claim_volume("raw", "raw")),
                "/spec/containers",
                json!([{"name": "app", "image": "registry.k8s.io/pause:3.10",
                        "volumeDevices": [{"name": "raw", "devicePath": "/dev/xvda"}]}]),
            ),
            None,
        ),
        (
            "ClaimNotSupported",
            with_volume(pod("rwx-longhorn"), claim_volume("shared", "shared")),
            None,
        ),
        (
            "ClaimNotSupported",
            with_volume(pod("nfs-claim"), claim_volume("media", "media")),
            None,
        ),
        (
            "ClaimSupportUnknown",
            with_volume(pod("unknown-driver"), claim_volume("odd", "odd")),
            None,
        ),
        (
            "ClaimNotFound",
            with_volume(
                pod("missing-claim"),
                claim_volume("config", "never-created"),
            ),
            None,
        ),
        (
            "IDOutOfRange",
            set(
                pod("run-as-user-70000"),
                "/spec/securityContext",
                json!({"runAsUser": 70000}),
            ),
            None,
        ),
    ];
    for (code, pod, expected_host_users) in cases {
        let stored = webhook.create_pod(pod).await;
        let name = stored.metadata.name.clone().unwrap();
        assert_eq!(host_users(&stored), expected_host_users, "{name}");
        assert_eq!(annotation(&stored, DECISION), Some("skipped"), "{name}");
        let reason = annotation(&stored, REASON).unwrap();
        assert!(
            reason.starts_with(&format!("{code}: ")),
            "{name}: expected {code}, got {reason:?}"
        );
    }
    webhook.unregister().await;
}

/// A StatefulSet creates a claim and, a moment later, its pod: the webhook waits (bounded)
/// for the cache to catch up instead of judging the claim missing.
#[tokio::test]
async fn a_claim_and_its_pod_created_back_to_back_get_the_right_decision() {
    let webhook = Webhook::start("wh-back-to-back", Mode::Enforce).await;
    let longhorn = webhook.create_class("longhorn", "driver.longhorn.io").await;
    webhook.wait_cached(&[&longhorn], &[]).await;

    for i in 0..5 {
        let claim = format!("data-db-{i}");
        webhook
            .create_claim(&claim, &longhorn, &["ReadWriteOnce"], false)
            .await;
        let stored = webhook
            .create_pod(with_volume(
                pod(&format!("db-{i}")),
                claim_volume("data", &claim),
            ))
            .await;
        assert_eq!(host_users(&stored), Some(false), "db-{i}: {stored:?}");
        assert_eq!(annotation(&stored, DECISION), Some("enabled"));
    }
    // Tighter still: both requests in flight at once, so the pod often reaches admission
    // before the claim's watch event reaches the cache (or before the claim is stored).
    for i in 0..10 {
        let claim = format!("data-web-{i}");
        let ((), stored) = tokio::join!(
            webhook.create_claim(&claim, &longhorn, &["ReadWriteOnce"], false),
            webhook.create_pod(with_volume(
                pod(&format!("web-{i}")),
                claim_volume("data", &claim),
            )),
        );
        assert_eq!(host_users(&stored), Some(false), "web-{i}: {stored:?}");
        assert_eq!(annotation(&stored, DECISION), Some("enabled"));
    }
    eprintln!(
        "admissions that waited for the claim to reach the cache: {} (all caught up; none timed out: {})",
        webhook.state.metrics.cache_waits(true),
        webhook.state.metrics.cache_waits(false)
    );
    assert_eq!(webhook.state.metrics.cache_waits(false), 0);
    // With ten concurrent pairs, at least one pod reaches the webhook before its claim reaches
    // the cache (in practice all ten do): the wait is exercised, not just available.
    assert!(webhook.state.metrics.cache_waits(true) >= 1);
    // The same with a claim that must be refused: the reason is its storage, not its absence.
    webhook
        .create_claim("shared-0", &longhorn, &["ReadWriteMany"], false)
        .await;
    let stored = webhook
        .create_pod(with_volume(
            pod("shared-0"),
            claim_volume("data", "shared-0"),
        ))
        .await;
    assert_eq!(host_users(&stored), None);
    assert!(
        annotation(&stored, REASON)
            .unwrap()
            .starts_with("ClaimNotSupported: "),
        "{:?}",
        annotation(&stored, REASON)
    );
    webhook.unregister().await;
}

#[tokio::test]
async fn audit_mode_annotates_and_changes_no_host_users() {
    let webhook = Webhook::start("wh-audit", Mode::Audit).await;
    let safe = webhook.create_pod(pod("would-enable")).await;
    assert_eq!(host_users(&safe), None);
    assert_eq!(annotation(&safe, DECISION), Some("audit"));
    assert!(
        annotation(&safe, REASON)
            .unwrap()
            .starts_with("enforce mode would set spec.hostUsers: false; "),
    );
    let unsafe_pod = webhook
        .create_pod(set(pod("would-skip"), "/spec/hostNetwork", json!(true)))
        .await;
    assert_eq!(host_users(&unsafe_pod), None);
    assert_eq!(annotation(&unsafe_pod, DECISION), Some("audit"));
    assert!(
        annotation(&unsafe_pod, REASON)
            .unwrap()
            .starts_with("enforce mode would leave the pod as written; HostNetwork: "),
    );
    assert_eq!(webhook.state.metrics.admissions(Outcome::Enabled), 0);
    webhook.unregister().await;
}

#[tokio::test]
async fn opted_out_pods_and_namespaces_are_left_as_written() {
    let webhook = Webhook::start("wh-opt-out", Mode::Enforce).await;
    let mut labelled = pod("opted-out");
    labelled["metadata"]["labels"] = json!({"userns.io/opt-out": "true"});
    let stored = webhook.create_pod(labelled).await;
    assert_eq!(host_users(&stored), None);
    assert_eq!(annotation(&stored, DECISION), None, "no patch at all");

    // Label the namespace; once the cache has the label, pods there are left alone.
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(webhook.admin.clone());
    namespaces
        .patch(
            &webhook.ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"labels": {"userns.io/opt-out": "true"}}}),
            ),
        )
        .await
        .unwrap();
    let started = Instant::now();
    while webhook
        .caches
        .namespace_labels(&webhook.ns)
        .is_none_or(|l| !l.contains_key("userns.io/opt-out"))
    {
        assert!(started.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = webhook.create_pod(pod("in-opted-out-namespace")).await;
    assert_eq!(host_users(&stored), None);
    assert_eq!(annotation(&stored, DECISION), None);
    assert_eq!(webhook.state.metrics.admissions(Outcome::OptOut), 2);
    webhook.unregister().await;
}

/// 1,000 admissions through the API server; the process holding the caches sends no request
/// at all meanwhile: counted on its client, and in the API server's audit log (by user).
#[tokio::test]
async fn a_thousand_admissions_make_zero_api_requests() {
    const ADMISSIONS: usize = 1000;
    let webhook = Webhook::start("wh-zero-api", Mode::Enforce).await;
    let longhorn = webhook.create_class("longhorn", "driver.longhorn.io").await;
    webhook
        .create_claim("data", &longhorn, &["ReadWriteOnce"], false)
        .await;
    webhook.wait_cached(&[&longhorn], &["data"]).await;
    let user = cache_user(&webhook.ns);
    let audited = |cp: &ControlPlane| -> Vec<String> {
        cp.audit_events()
            .into_iter()
            .filter(|e| e["user"]["username"] == user.as_str())
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["stage"].as_str().unwrap_or(""),
                    e["verb"].as_str().unwrap_or(""),
                    e["requestURI"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let enabled_before = webhook.state.metrics.admissions(Outcome::Enabled);
    let requests_before = webhook.requests.len();
    let audit_before = audited(webhook.cp).len();
    let started = Instant::now();

    let pod: Pod =
        serde_json::from_value(with_volume(pod("many"), claim_volume("data", "data"))).unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let pods = webhook.pods();
    let results: Vec<Pod> = futures::stream::iter(0..ADMISSIONS)
        .map(|i| {
            let mut pod = pod.clone();
            pod.metadata.name = Some(format!("many-{i}"));
            let (pods, dry_run) = (pods.clone(), dry_run.clone());
            async move { pods.create(&dry_run, &pod).await.expect("dry-run create") }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let elapsed = started.elapsed();
    assert_eq!(results.len(), ADMISSIONS);
    assert!(results.iter().all(|p| host_users(p) == Some(false)));
    assert_eq!(
        webhook.state.metrics.admissions(Outcome::Enabled) - enabled_before,
        ADMISSIONS as u64,
        "each dry-run create was one admission"
    );

    let sent = webhook.requests.since(requests_before);
    assert!(
        sent.is_empty(),
        "the caches' client sent {} request(s) during the admissions: {sent:#?}",
        sent.len()
    );
    eprintln!(
        "{ADMISSIONS} admissions in {elapsed:?}; requests from the webhook process: {} \
         (total since start-up: {}, all before the admissions)",
        sent.len(),
        webhook.requests.len()
    );
    // Give the audit log a moment to flush, then compare.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = audited(webhook.cp);
    let during = &events[audit_before..];
    assert!(
        during.is_empty(),
        "the API server logged requests from {user}: {during:#?}"
    );
    eprintln!(
        "audit log: {audit_before} event(s) from {user} before the admissions, {} during them",
        during.len()
    );
    webhook.unregister().await;
}

/// The serving certificate is replaced on disk by one from another CA and the caBundle
/// switched to that CA: the API server keeps reaching the same server process, now verifying
/// the rotated certificate.
///
/// Two things could let an admission succeed without the rotated certificate, and are ruled
/// out in turn: the server still presenting the old one (it is picked up at the next check of
/// the files: the test waits for that reload before anything else), and the API server still
/// on the old configuration, whose client keeps idle connections opened under the old
/// certificate (the rotated configuration only sends labelled pods: an unlabelled pod admitted
/// without a decision shows it is in effect, and its new caBundle means a new client).
#[tokio::test]
async fn a_certificate_rotated_on_disk_is_served_to_the_api_server_without_a_restart() {
    let webhook = Webhook::start("wh-rotation", Mode::Enforce).await;
    let rotated = SelfSigned::generate(&[]).unwrap();
    let dir = webhook.cert_dir.path();
    std::fs::write(dir.join("tls.key"), &rotated.key_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &rotated.cert_pem).unwrap();
    let started = Instant::now();
    while webhook.state.metrics.tls_reloads(true) == 0 {
        assert!(
            started.elapsed() < WAIT,
            "the rotated pair was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("rotated pair loaded after {:?}", started.elapsed());

    let mut config = registration(
        &webhook.config_name,
        &webhook.url(),
        &webhook.ns,
        Some(&rotated.ca_pem),
    );
    let rotation_label = ("userns.test/rotation", "done");
    config.webhooks.as_mut().unwrap()[0].object_selector = Some(LabelSelector {
        match_labels: Some([(rotation_label.0.into(), rotation_label.1.into())].into()),
        ..Default::default()
    });
    apply_webhook_configuration(&webhook.admin, &config).await;
    // Until then: errors (the old configuration, whose CA the server no longer presents;
    // failurePolicy Fail), or decisions (the old configuration over an idle connection made
    // under the old pair).
    dry_run_until(
        &webhook.pods(),
        "the rotated configuration in effect",
        |created| annotation(created, DECISION).is_none(),
    )
    .await;

    let mut labelled = pod("after-rotation");
    labelled["metadata"]["labels"] = json!({rotation_label.0: rotation_label.1});
    let stored = webhook.create_pod(labelled).await;
    assert_eq!(host_users(&stored), Some(false));
    assert_eq!(annotation(&stored, DECISION), Some("enabled"));
    assert_eq!(webhook.state.metrics.tls_reloads(true), 1);
    webhook.unregister().await;
}

/// `serve` with `--self-signed-tls` and `--webhook-config-name`, in its own test namespace,
/// before its configuration exists.
struct SelfSignedWebhook {
    admin: Client,
    ns: TestNamespace,
    state: Arc<WebhookState>,
    url: String,
    config_name: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), userns_labeler::webhook::WebhookError>>,
}

impl SelfSignedWebhook {
    async fn start(prefix: &str) -> SelfSignedWebhook {
        let cp = control_plane();
        let admin = cp.client().await;
        let ns = cp.namespace(prefix).await;
        let shutdown = CancellationToken::new();
        let (state, client, _) = cached_state(cp, &ns, &shutdown).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config_name = format!("userns-test-{}", ns.name());
        let args = WebhookArgs {
            webhook_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            self_signed_tls: true,
            webhook_config_name: Some(config_name.clone()),
            ..WebhookArgs::default()
        };
        let server = tokio::spawn({
            let (state, shutdown) = (state.clone(), shutdown.clone());
            let namespace = ns.name().to_string();
            async move { serve(&args, state, client, &namespace, shutdown).await }
        });
        SelfSignedWebhook {
            admin,
            ns,
            state,
            url: format!("https://127.0.0.1:{port}/mutate/pods"),
            config_name,
            shutdown,
            server,
        }
    }

    fn configs(&self) -> Api<MutatingWebhookConfiguration> {
        Api::all(self.admin.clone())
    }

    /// Polls (every 20 ms) until the configuration's caBundle is the one in `differs_from`'s
    /// place: present, and not `differs_from`. The bundle and how long it took.
    async fn bundle_written(&self, differs_from: Option<&ByteString>) -> (ByteString, Duration) {
        let started = Instant::now();
        loop {
            let config = self.configs().get_opt(&self.config_name).await.unwrap();
            let bundle = config
                .and_then(|c| c.webhooks?.first()?.client_config.ca_bundle.clone())
                .filter(|b| Some(b) != differs_from);
            if let Some(bundle) = bundle {
                return (bundle, started.elapsed());
            }
            assert!(
                started.elapsed() < WAIT,
                "no caBundle written within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Dry-run creates until the API server calls the webhook and the pod comes back enabled.
    async fn wait_until_mutating(&self) {
        let pods = Api::<Pod>::namespaced(self.admin.clone(), &self.ns);
        dry_run_until(&pods, "a pod enabled", |created| {
            host_users(created) == Some(false)
        })
        .await;
    }

    /// Waits until `n` writes of the caBundle were counted (the counter follows the write the
    /// API server shows), then checks there were no more.
    async fn assert_injections(&self, n: u64) {
        let started = Instant::now();
        while self.state.metrics.ca_bundle_injections(true) < n {
            assert!(
                started.elapsed() < WAIT,
                "fewer than {n} caBundle writes counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(self.state.metrics.ca_bundle_injections(true), n);
    }

    async fn stop(self) {
        let _ = self
            .configs()
            .delete(&self.config_name, &DeleteParams::default())
            .await;
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
    }
}

/// `--self-signed-tls` through `serve`: the configuration is created after the server starts;
/// the CA is written into its caBundle and the API server then trusts it.
#[tokio::test]
async fn self_signed_tls_writes_the_ca_bundle_into_the_configuration() {
    let webhook = SelfSignedWebhook::start("wh-self-signed").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    register(
        &webhook.admin,
        &webhook.config_name,
        &webhook.url,
        &webhook.ns,
        None,
    )
    .await;
    let (bundle, _) = webhook.bundle_written(None).await;
    assert!(String::from_utf8_lossy(&bundle.0).contains("BEGIN CERTIFICATE"));
    webhook.wait_until_mutating().await;
    webhook.assert_injections(1).await;
    webhook.stop().await;
}

/// A configuration deleted and re-created without a caBundle (a GitOps replace), or given
/// another CA's bundle, gets the self-signed CA back within seconds, without a restart, and
/// the API server calls the webhook again.
#[tokio::test]
async fn a_re_created_or_altered_configuration_gets_the_self_signed_ca_back_without_a_restart() {
    let webhook = SelfSignedWebhook::start("wh-recreated").await;
    let config = || registration(&webhook.config_name, &webhook.url, &webhook.ns, None);
    apply_webhook_configuration(&webhook.admin, &config()).await;
    let (ours, _) = webhook.bundle_written(None).await;
    webhook.wait_until_mutating().await;

    webhook
        .configs()
        .delete(&webhook.config_name, &DeleteParams::default())
        .await
        .unwrap();
    apply_webhook_configuration(&webhook.admin, &config()).await;
    let (restored, took) = webhook.bundle_written(None).await;
    assert_eq!(restored, ours);
    eprintln!("caBundle restored {took:?} after the configuration was re-created");
    webhook.wait_until_mutating().await;

    let other = SelfSigned::generate(&[]).unwrap();
    let other_bundle = ByteString(other.ca_pem.clone().into_bytes());
    apply_webhook_configuration(
        &webhook.admin,
        &registration(
            &webhook.config_name,
            &webhook.url,
            &webhook.ns,
            Some(&other.ca_pem),
        ),
    )
    .await;
    let (restored, took) = webhook.bundle_written(Some(&other_bundle)).await;
    assert_eq!(restored, ours);
    eprintln!("caBundle restored {took:?} after another CA's bundle was written");
    webhook.wait_until_mutating().await;
    webhook.assert_injections(3).await;
    webhook.stop().await;
}

/// A pod with 5,000 claims none of which exists, created through the API server: admitted
/// (not rejected for an oversized annotation), `decision: skipped` with a reason of at most
/// 1 KiB, after exactly one cache wait that ran out. How long the create took and the CPU the
/// webhook used are printed, not asserted (a loaded machine stretches both; the wait's cost is
/// the benchmarks' business).
#[tokio::test]
async fn a_pod_with_five_thousand_missing_claims_is_admitted_with_a_bounded_reason() {
    let webhook = Webhook::start("wh-5000-claims", Mode::Enforce).await;
    let volumes: Vec<Value> = (0..5_000)
        .map(|i| claim_volume(&format!("v{i}"), &format!("missing-{i}")))
        .collect();
    let mut huge = pod("huge");
    huge["spec"]["volumes"] = Value::Array(volumes);
    let cache_wait = AdmissionSettings::default().cache_wait;
    let (started, cpu_before) = (Instant::now(), process_cpu());
    let stored = webhook.create_pod(huge).await;
    let (took, cpu) = (started.elapsed(), process_cpu() - cpu_before);
    let reason = annotation(&stored, REASON).unwrap();
    eprintln!(
        "5,000 missing claims: created in {took:?} (cache wait {cache_wait:?}), this test process \
         used {cpu:?} of CPU meanwhile (other tests of the binary included); reason {} bytes: {}…",
        reason.len(),
        &reason[..120]
    );
    assert_eq!(annotation(&stored, DECISION), Some("skipped"));
    assert_eq!(host_users(&stored), None);
    assert!(reason.len() <= 1024, "{}", reason.len());
    assert!(reason.starts_with("ClaimNotFound: "), "{reason}");
    assert!(reason.ends_with("more"), "{reason}");
    assert!(
        took >= cache_wait,
        "the webhook waited for the claims: {took:?}"
    );
    assert_eq!(webhook.state.metrics.cache_waits(false), 1);
    webhook.unregister().await;
}

/// CPU time (user and system) of this process so far, from `/proc/self/stat` (100 ticks/s).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}
