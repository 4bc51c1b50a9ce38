//! End-to-end admission latency through the real API server: pod creates (server-side dry
//! run, so nothing is stored) in namespaces holding 2, 2,001 and 20,000 labelled claims, each
//! sent through one of several admission chains, interleaved request by request so that load on
//! the machine touches every chain alike. Sequential (one keep-alive connection) and 8-way.
//!
//! Chains ([`chains`]), each chosen by the pod label `bench-chain: <name>`:
//! - `none`: no webhook is called: the API server's own floor;
//! - `constant`: a webhook on the same TLS stack as ours (axum, axum-server, rustls with ring,
//!   a certificate of the same CA), in a process of its own as ours is, with the same tokio
//!   runtime, registered exactly as the chart registers ours, answering
//!   every review with the same patch ours returns for the pod, without reading the request
//!   beyond its uid: the API server's cost of calling any webhook;
//! - `userns-labeler`: the real binary (`userns-labeler run`, controller and webhook), as the
//!   chart's least-privileged user, registered the same way, publishing the claim maps as the
//!   chart does by default;
//! - `kyverno-noop`, `kyverno-seed`, `kyverno-policy`, `kyverno-cel`: Kyverno's real admission
//!   server with a no-op mutate policy, the seed write-up's apiCall policy, and the two policies
//!   of `deploy/kyverno` ([`kyverno`]).
//!
//! The claims of the cluster: the namespaces' claims (`USERNS_ADMISSION_SIZES`), then, for each
//! total of `USERNS_ADMISSION_CLUSTER` (default `0,20000`: as created, then 20,000), filler
//! claims in another namespace up to that total; every chain is measured at each total.
//! Then the `direct` scenario posts the same reviews straight to our webhook and the constant
//! one, bypassing the API server ([`measure_direct`]): whether a difference between the two is
//! in the webhook process or on the way to it. Afterwards the churn scenario runs ([`churn`]).
//! `USERNS_ADMISSION_SCENARIOS` picks among them (default `latency,direct,churn`).
//!
//! "Registered the same way": the chart's MutatingWebhookConfiguration
//! (`deploy/manifests/userns-labeler.yaml`) with its client config pointed at the server by URL
//! and the chain's label added to its objectSelector. Another chain (say a Kyverno admission
//! server) is one more [`Chain`] entry in [`chains`]: it starts its server, registers it for pods
//! labelled with its name, and returns a guard that tears it down.
//!
//! Run: `cargo bench --bench admission_latency` (needs `make control-plane` and `make tools`).
//! Environment: `USERNS_ADMISSION_SIZES` (claims per namespace, default `2,2001`),
//! `USERNS_ADMISSION_ROUNDS` (default 3), `USERNS_ADMISSION_REQUESTS` (per chain, size, mode and
//! round, default 300), `USERNS_ADMISSION_CONCURRENCY` (the parallel mode, default 8),
//! `USERNS_ADMISSION_CHAINS` (a subset, by name).

use std::any::Any;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use base64::Engine;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
#[path = "admission_latency/churn.rs"]
mod churn;
#[path = "admission_latency/kyverno.rs"]
mod kyverno;

use userns_labeler_test_support::control_plane::{self, CertPair, ControlPlane};
use userns_labeler_test_support::kyverno::KyvernoServer;
use userns_labeler_test_support::labeler::{self, Labeler};
use userns_labeler_test_support::measure::{self, bootstrap_delta_ms, ms, percentile};
use userns_labeler_test_support::repo_root;
use userns_labeler_test_support::webhook::https;

/// The binary under test (cargo sets this for the root package's tests and benchmarks).
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
/// The pod label that picks a chain.
const CHAIN_LABEL: &str = "bench-chain";
const MUTATE_PODS: &str = "/mutate/pods";

/// What a chain's setup gets to work with.
pub struct Env {
    pub cp: &'static ControlPlane,
    pub admin: Client,
    /// A serving certificate for 127.0.0.1 signed by the control plane's CA.
    pub cert: CertPair,
    /// The namespace the labeler runs in (its RBAC, Lease and driver ConfigMap).
    pub labeler_ns: String,
    /// The namespaces pods are created in, by claims held.
    pub namespaces: Vec<(usize, String)>,
    /// The namespace of the churn claims, when the churn scenario runs.
    pub churn_ns: Option<String>,
    /// The claims of the cluster.
    pub claims: usize,
    /// What the labeler's webhook answered for the benchmark pod: the constant chain's patch.
    pub patch: Mutex<Option<Value>>,
    /// Kyverno's admission server, started by the first Kyverno chain.
    pub kyverno: Mutex<Option<KyvernoServer>>,
    /// The webhooks the `direct` scenario calls: chain name and address.
    pub webhooks: Mutex<Vec<(&'static str, SocketAddr)>>,
}

/// A running chain; dropping it stops what it started.
pub struct Running {
    _guard: Box<dyn Any + Send>,
}

impl Running {
    pub fn new(guard: impl Any + Send) -> Running {
        Running {
            _guard: Box::new(guard),
        }
    }
}

/// One admission chain: its name (the value of the pod label `bench-chain`), whether it enables
/// the benchmark pod, and how to start it (given its name). Chains start in the order listed; a
/// later one may use what an earlier one left in [`Env`] (the constant chain uses the labeler's
/// patch).
pub struct Chain {
    pub name: &'static str,
    pub enables: bool,
    pub start: for<'a> fn(&'a Env, &'static str) -> BoxFuture<'a, Running>,
}

/// The chains measured, in the order they start.
fn chains() -> Vec<Chain> {
    let ours = [
        Chain {
            name: "none",
            enables: false,
            start: |_, _| async { Running::new(()) }.boxed(),
        },
        Chain {
            name: "userns-labeler",
            enables: true,
            start: |env, _| start_labeler(env).boxed(),
        },
        Chain {
            name: "constant",
            enables: true,
            start: |env, _| start_constant(env).boxed(),
        },
    ];
    let kyverno = kyverno::POLICIES.map(|(name, _, enables)| Chain {
        name,
        enables,
        start: |env, name| kyverno::start(env, name).boxed(),
    });
    ours.into_iter().chain(kyverno).collect()
}

/// The chart's webhook configuration for `chain`, calling `url` with the control plane's CA,
/// only for pods labelled `bench-chain: <chain>`.
fn webhook_configuration(env: &Env, chain: &str, url: &str) -> MutatingWebhookConfiguration {
    let text = std::fs::read_to_string(repo_root().join(labeler::MANIFESTS)).unwrap();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut config = documents
        .into_iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("the chart's webhook configuration");
    config["metadata"] = json!({"name": format!("bench-{chain}")});
    let ca = base64::engine::general_purpose::STANDARD.encode(env.cp.ca_pem());
    for webhook in config["webhooks"].as_array_mut().unwrap() {
        webhook["clientConfig"] = json!({"url": url, "caBundle": ca});
        webhook["objectSelector"]["matchExpressions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": CHAIN_LABEL, "operator": "In", "values": [chain]}));
    }
    serde_json::from_value(config).unwrap()
}

/// Registers `config`, replacing one of the same name.
async fn register(env: &Env, config: &MutatingWebhookConfiguration) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(env.admin.clone());
    let name = config.metadata.name.clone().unwrap();
    let _ = api.delete(&name, &DeleteParams::default()).await;
    api.create(&PostParams::default(), config)
        .await
        .expect("webhook configuration");
}

/// The labeler (controller and webhook) with the control plane's certificate, as the chart's
/// user, once it is ready and has labelled every claim.
async fn start_labeler(env: &Env) -> Running {
    let dir = env.cp.dir().join("bench-labeler");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &env.cert.cert_pem).unwrap();
    std::fs::write(&key, &env.cert.key_pem).unwrap();
    let kubeconfig =
        labeler::least_privileged_kubeconfig(env.cp, &env.admin, &env.labeler_ns).await;
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let labeler = Labeler::spawn(
        USERNS_LABELER,
        &kubeconfig,
        &env.labeler_ns,
        env.cp.dir(),
        "bench",
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--claim-maps",
        ],
    );
    labeler.wait_ready(Duration::from_secs(60));
    wait_published(env, env.claims).await;
    let url = format!("https://{}{MUTATE_PODS}", labeler.webhook);
    register(env, &webhook_configuration(env, "userns-labeler", &url)).await;
    let addr = labeler.webhook.parse().unwrap();
    env.webhooks.lock().unwrap().push(("userns-labeler", addr));
    // The patch it answers for the benchmark pod, for the constant chain.
    let (_, ns) = &env.namespaces[0];
    let answered = dry_run_review(&labeler, env.cp.ca_pem(), ns).await;
    *env.patch.lock().unwrap() = Some(answered);
    Running::new(labeler)
}

/// The AdmissionReview the API server sends our webhook for a dry-run create of its benchmark
/// pod in `ns`.
fn pod_review(ns: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": pod("userns-labeler"),
            "dryRun": true,
        }
    })
}

/// Sends the benchmark pod's review to the labeler directly: the response's `patch`, decoded.
async fn dry_run_review(labeler: &Labeler, ca_pem: &str, ns: &str) -> Value {
    let review = pod_review(ns, "00000000-0000-0000-0000-000000000000");
    let addr: SocketAddr = labeler.webhook.parse().unwrap();
    let config = https::trusting(ca_pem);
    let mut sender = https::connect(addr, "127.0.0.1", config)
        .await
        .expect("the webhook's port");
    let (status, body) = https::post(
        &mut sender,
        MUTATE_PODS,
        serde_json::to_vec(&review).unwrap().into(),
    )
    .await
    .expect("a review answered");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let patch = answer["response"]["patch"]
        .as_str()
        .expect("the labeler enables the benchmark pod");
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap(),
    )
    .unwrap()
}

/// The constant webhook: the labeler's patch for the benchmark pod, answered to every review
/// with only its uid copied in. A process of its own (this benchmark's binary again, see
/// [`CONSTANT_SERVER`]), like the labeler: served from inside this process it would share the
/// load generator's threads and caches, and be woken on the core the request was just sent from.
async fn start_constant(env: &Env) -> Running {
    let patch = env
        .patch
        .lock()
        .unwrap()
        .clone()
        .expect("the labeler chain starts first");
    let patch =
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&patch).unwrap());
    let template = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": "UID-PLACEHOLDER", "allowed": true,
                     "patchType": "JSONPatch", "patch": patch},
    }))
    .unwrap();
    let dir = env.cp.dir().join("bench-constant");
    std::fs::create_dir_all(&dir).unwrap();
    let files = ["tls.crt", "tls.key", "answer.json"].map(|f| dir.join(f));
    std::fs::write(&files[0], &env.cert.cert_pem).unwrap();
    std::fs::write(&files[1], &env.cert.key_pem).unwrap();
    std::fs::write(&files[2], template).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CONSTANT_SERVER, dir.as_os_str())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the constant webhook's process");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("LISTENING ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the constant webhook did not start: {line:?}"));
    let url = format!("https://{addr}{MUTATE_PODS}");
    register(env, &webhook_configuration(env, "constant", &url)).await;
    env.webhooks.lock().unwrap().push(("constant", addr));
    Running::new(ChildProcess(child))
}

/// Set (to a directory holding `tls.crt`, `tls.key` and `answer.json`), this binary is the
/// constant webhook: it prints `LISTENING <addr>` and serves until its stdin closes.
const CONSTANT_SERVER: &str = "USERNS_ADMISSION_CONSTANT_SERVER";

/// The constant webhook's process: the tokio runtime the labeler's binary has (one worker per
/// core), axum and axum-server with rustls, `template` with the request's uid for every review.
fn serve_constant(dir: &std::path::Path) {
    control_plane::install_crypto_provider();
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let (cert, key, template) = (
        read("tls.crt"),
        read("tls.key"),
        Arc::new(read("answer.json")),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    println!("LISTENING {}", listener.local_addr().unwrap());
    // Stops when the benchmark does (its end of the pipe closes), however it ends.
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
    runtime.block_on(async move {
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem(cert, key)
            .await
            .unwrap();
        let router = axum::Router::new().route(
            MUTATE_PODS,
            post(move |body: Bytes| {
                let template = template.clone();
                async move {
                    (
                        [("content-type", "application/json")],
                        constant_answer(&template, &body),
                    )
                }
            }),
        );
        axum_server::from_tcp_rustls(listener, tls)
            .unwrap()
            .serve(router.into_make_service())
            .await
            .unwrap();
    });
}

/// A child process, killed when dropped.
struct ChildProcess(std::process::Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `template` with the request's uid (the first `"uid"` member of the review: the request's).
fn constant_answer(template: &[u8], review: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"\"uid\":\"";
    const PLACEHOLDER: &[u8] = b"UID-PLACEHOLDER";
    let uid = review
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|at| &review[at + KEY.len()..])
        .and_then(|rest| rest.iter().position(|b| *b == b'"').map(|end| &rest[..end]))
        .unwrap_or_default();
    let at = template
        .windows(PLACEHOLDER.len())
        .position(|w| w == PLACEHOLDER)
        .unwrap();
    [&template[..at], uid, &template[at + PLACEHOLDER.len()..]].concat()
}

/// The benchmark pod: one container, two claims of the namespace.
fn pod(chain: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "bench-", "labels": {CHAIN_LABEL: chain, "app": "bench"}},
        "spec": {
            "containers": [{"name": "app", "image": "registry.example.com/app:1.0",
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                            "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                             {"name": "logs", "mountPath": "/logs"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "claim-0"}},
                        {"name": "logs", "persistentVolumeClaim": {"claimName": "claim-1"}}]
        }
    })
}

/// The claims' driver, `true` in the default table.
const DRIVER: &str = "ebs.csi.aws.com";

/// A claim `name` on `driver` (by the provisioner annotation).
fn claim(name: String, driver: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name,
                     "annotations": {"volume.kubernetes.io/storage-provisioner": driver}},
        "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap()
}

/// A dry-run create of `body` in `ns`: the response's pod, as JSON.
async fn create(client: &Client, ns: &str, body: &[u8]) -> Value {
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{ns}/pods"))
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            body.to_vec(),
        )
        .unwrap();
    let text = client.request_text(request).await.expect("pod create");
    serde_json::from_str(&text).unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Sequential,
    Parallel(usize),
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Sequential => f.write_str("sequential"),
            Mode::Parallel(n) => write!(f, "{n}-way"),
        }
    }
}

/// Latencies by (claims in the cluster, claims in the namespace, mode, chain), and per round.
type Samples = BTreeMap<(usize, usize, Mode, usize), Vec<Vec<Duration>>>;

/// Waits until `total` claims of the cluster are labelled `true` and `true` in the claim maps
/// (the Kyverno chains read those).
async fn wait_published(env: &Env, total: usize) {
    let started = Instant::now();
    let what = format!("{total} claims labelled true and in the claim maps");
    labeler::eventually(&what, Duration::from_secs(1200), || async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (labelled, mapped) = published(env, None, "true").await;
        (labelled >= total && mapped >= total).then_some(())
    })
    .await;
    eprintln!("{what} after {:.1?}", started.elapsed());
}

/// How many claims (of namespace `ns`, or of the cluster) carry `value` in their label, and in
/// the claim maps; 0 for a list that failed.
async fn published(env: &Env, ns: Option<&str>, value: &str) -> (usize, usize) {
    let claims: Api<PersistentVolumeClaim> = match ns {
        Some(ns) => Api::namespaced(env.admin.clone(), ns),
        None => Api::all(env.admin.clone()),
    };
    let labelled = claims
        .list_metadata(&ListParams::default().labels(&format!("userns.io/idmap-supported={value}")))
        .await
        .map_or(0, |l| l.items.len());
    let prefix = format!(
        "userns-claims.{}",
        ns.map_or(String::new(), |ns| format!("{ns}."))
    );
    let maps: Api<ConfigMap> = Api::namespaced(env.admin.clone(), &env.labeler_ns);
    let mapped = maps
        .list(&ListParams::default().labels("userns.io/claim-map=v1"))
        .await
        .map_or(0, |l| {
            l.items
                .into_iter()
                .filter(|m| m.name_any().starts_with(&prefix))
                .flat_map(|m| m.data.unwrap_or_default().into_values())
                .filter(|v| v == value)
                .count()
        });
    (labelled, mapped)
}

/// Creates the claims `<prefix>-<i>` of `ns` on `driver`, for `i` in `range`.
async fn create_claims(
    admin: &Client,
    ns: &str,
    range: std::ops::Range<usize>,
    prefix: &str,
    driver: &str,
) {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), ns);
    futures::stream::iter(range)
        .map(|i| {
            let api = api.clone();
            let claim = claim(format!("{prefix}-{i}"), driver);
            async move { api.create(&PostParams::default(), &claim).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("claims");
}

/// `requests` creates per chain, round-robin over the chains (each worker starting at another
/// chain), by `workers` at once.
async fn measure_block(
    client: &Client,
    ns: &str,
    bodies: &[Vec<u8>],
    requests: usize,
    workers: usize,
) -> Vec<Vec<Duration>> {
    let per_worker = requests.div_ceil(workers);
    let results: Vec<Vec<Vec<Duration>>> = futures::stream::iter(0..workers)
        .map(|w| async move {
            let mut latencies = vec![Vec::with_capacity(per_worker); bodies.len()];
            for i in 0..per_worker {
                for k in 0..bodies.len() {
                    let chain = (i + k + w) % bodies.len();
                    let started = Instant::now();
                    create(client, ns, &bodies[chain]).await;
                    latencies[chain].push(started.elapsed());
                }
            }
            latencies
        })
        .buffer_unordered(workers)
        .collect()
        .await;
    let mut merged = vec![Vec::new(); bodies.len()];
    for worker in results {
        for (chain, latencies) in worker.into_iter().enumerate() {
            merged[chain].extend(latencies);
        }
    }
    merged
}

fn main() {
    if let Some(dir) = std::env::var_os(CONSTANT_SERVER) {
        serve_constant(std::path::Path::new(&dir));
        return;
    }
    // `cargo test --all-targets` runs bench targets without `--bench`: build-check only.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "admission_latency: a benchmark; run it with `cargo bench --bench admission_latency`"
        );
        return;
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let list = |k: &str, default: &str| -> Vec<String> {
        var(k)
            .unwrap_or_else(|| default.to_string())
            .split(',')
            .map(str::to_string)
            .collect()
    };
    let numbers = |k: &str, default: &str| -> Vec<usize> {
        list(k, default)
            .iter()
            .map(|s| s.parse().unwrap_or_else(|_| panic!("{k}: numbers")))
            .collect()
    };
    let sizes = numbers("USERNS_ADMISSION_SIZES", "2,2001");
    let totals = numbers("USERNS_ADMISSION_CLUSTER", "0,20000");
    let rounds: usize = var("USERNS_ADMISSION_ROUNDS").map_or(3, |v| v.parse().unwrap());
    let requests: usize = var("USERNS_ADMISSION_REQUESTS").map_or(300, |v| v.parse().unwrap());
    let parallel: usize = var("USERNS_ADMISSION_CONCURRENCY").map_or(8, |v| v.parse().unwrap());
    let scenarios = list("USERNS_ADMISSION_SCENARIOS", "latency,direct,churn");
    let latency = scenarios.iter().any(|s| s == "latency");
    let direct = scenarios.iter().any(|s| s == "direct");
    let churn_settings = scenarios
        .iter()
        .any(|s| s == "churn")
        .then(churn::Settings::from_env);
    let wanted = var("USERNS_ADMISSION_CHAINS");
    let chains: Vec<Chain> = chains()
        .into_iter()
        .filter(|c| {
            wanted
                .as_deref()
                .is_none_or(|w| w.split(',').any(|n| n == c.name))
        })
        .collect();

    control_plane::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cp = control_plane::shared();
        let admin = cp.client().await;
        let labeler_ns = cp.namespace("labeler").await;
        let mut namespaces = Vec::new();
        let mut guards = Vec::new();
        for &size in &sizes {
            let ns = cp.namespace(&format!("claims-{size}")).await;
            let t = Instant::now();
            create_claims(&admin, ns.name(), 0..size.max(2), "claim", DRIVER).await;
            eprintln!("{size} claims in {} in {:.1?}", ns.name(), t.elapsed());
            namespaces.push((size.max(2), ns.name().to_string()));
            guards.push(ns);
        }
        let mut total: usize = namespaces.iter().map(|(n, _)| n).sum();
        let churn_ns = match &churn_settings {
            Some(settings) => {
                let ns = cp.namespace("churn").await;
                churn::set_table(&admin, labeler_ns.name(), true).await;
                create_claims(
                    &admin,
                    ns.name(),
                    0..settings.claims,
                    "churn",
                    churn::DRIVER,
                )
                .await;
                total += settings.claims;
                let name = ns.name().to_string();
                guards.push(ns);
                Some(name)
            }
            None => None,
        };
        let env = Env {
            cp,
            admin: admin.clone(),
            cert: cp.issue_server_cert(&["127.0.0.1", "localhost"]),
            labeler_ns: labeler_ns.name().to_string(),
            namespaces,
            churn_ns,
            claims: total,
            patch: Mutex::new(None),
            kyverno: Mutex::new(None),
            webhooks: Mutex::new(Vec::new()),
        };
        // Every chain's namespaces see every chain's webhook configuration; the pod label picks.
        let mut running = Vec::new();
        for chain in &chains {
            running.push((chain.start)(&env, chain.name).await);
            eprintln!("chain {} started; {}", chain.name, measure::load());
        }
        let bodies: Vec<Vec<u8>> = chains
            .iter()
            .map(|c| serde_json::to_vec(&pod(c.name)).unwrap())
            .collect();
        // Each chain answers as it should, and every connection is warm.
        for (_, ns) in &env.namespaces {
            for (chain, body) in chains.iter().zip(&bodies) {
                let mut answer = Value::Null;
                for _ in 0..20 {
                    answer = create(&admin, ns, body).await;
                }
                let host_users = &answer["spec"]["hostUsers"];
                let enabled = *host_users == json!(false);
                assert_eq!(
                    enabled, chain.enables,
                    "chain {} in {ns}: hostUsers {host_users}",
                    chain.name
                );
            }
        }

        let modes = [Mode::Sequential, Mode::Parallel(parallel)];
        let mut samples: Samples = BTreeMap::new();
        let filler = cp.namespace("filler").await;
        let mut fillers = 0;
        for &target in totals.iter().filter(|_| latency) {
            if target > total {
                let t = Instant::now();
                let more = target - total;
                create_claims(
                    &admin,
                    filler.name(),
                    fillers..fillers + more,
                    "filler",
                    DRIVER,
                )
                .await;
                eprintln!(
                    "{more} more claims in {} in {:.1?}",
                    filler.name(),
                    t.elapsed()
                );
                fillers += more;
                total = target;
                wait_published(&env, total).await;
            }
            for round in 0..rounds {
                for &(size, ref ns) in &env.namespaces {
                    for mode in modes {
                        let workers = match mode {
                            Mode::Sequential => 1,
                            Mode::Parallel(n) => n,
                        };
                        let block = measure_block(&admin, ns, &bodies, requests, workers).await;
                        for (chain, latencies) in block.into_iter().enumerate() {
                            samples
                                .entry((total, size, mode, chain))
                                .or_default()
                                .push(latencies);
                        }
                    }
                }
                eprintln!(
                    "{total} claims: round {} done; {}",
                    round + 1,
                    measure::load()
                );
            }
        }
        if latency {
            print_latencies(&samples, &chains, rounds, requests);
        }
        if direct {
            let webhooks = env.webhooks.lock().unwrap().clone();
            measure_direct(&env, &webhooks, rounds, requests).await;
        }
        if let (Some(settings), Some(ns)) = (&churn_settings, &env.churn_ns) {
            let enabling: Vec<&'static str> = chains
                .iter()
                .map(|c| c.name)
                .filter(|c| ["userns-labeler", "kyverno-policy", "kyverno-cel"].contains(c))
                .collect();
            churn::run(&env, ns, &enabling, settings).await;
        }
        drop(running);
        drop(env.kyverno.lock().unwrap().take());
        drop(filler);
        drop(guards);
    });
}

/// The reference a chain is compared with: the Kyverno no-op policy for Kyverno's chains, the
/// constant webhook for the others.
fn reference(chains: &[Chain], chain: usize) -> Option<usize> {
    let name = if chains[chain].name.starts_with("kyverno-") {
        "kyverno-noop"
    } else {
        "constant"
    };
    chains
        .iter()
        .position(|c| c.name == name)
        .filter(|r| *r != chain)
}

/// The `direct` scenario: the same reviews the API server sends, posted straight to each
/// webhook (one keep-alive TLS connection each, HTTP/1.1), sequentially and interleaved request
/// by request: what is left of the end-to-end difference without the API server in between.
async fn measure_direct(
    env: &Env,
    webhooks: &[(&'static str, SocketAddr)],
    rounds: usize,
    requests: usize,
) {
    let config = https::trusting(env.cp.ca_pem());
    let mut senders = Vec::new();
    for (_, addr) in webhooks {
        senders.push(
            https::connect(*addr, "127.0.0.1", config.clone())
                .await
                .expect("the webhook's port"),
        );
    }
    println!(
        "\nthe webhooks alone (the same reviews posted straight to them, one keep-alive TLS connection each, sequential, interleaved), {rounds} round(s) × {requests} per webhook:"
    );
    println!(
        "  {:>7} {:<15} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>15}",
        "claims",
        "webhook",
        "n",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "Δp50 ms",
        "Δp99 ms",
        "Δp99 95% CI"
    );
    for (size, ns) in &env.namespaces {
        // Warm, as the end-to-end scenario's connections are (a smoke run's first request to a
        // fresh connection once took 45 ms).
        let warm = Bytes::from(serde_json::to_vec(&pod_review(ns, "warm-up")).unwrap());
        for sender in &mut senders {
            for _ in 0..20 {
                https::post(sender, MUTATE_PODS, warm.clone())
                    .await
                    .expect("a review answered");
            }
        }
        let mut latencies = vec![Vec::with_capacity(rounds * requests); webhooks.len()];
        for i in 0..rounds * requests {
            // Every webhook gets the same review: our webhook's pod.
            let uid = format!("00000000-0000-0000-0000-{i:012}");
            let body = Bytes::from(serde_json::to_vec(&pod_review(ns, &uid)).unwrap());
            for k in 0..webhooks.len() {
                let at = (i + k) % webhooks.len();
                let started = Instant::now();
                let (status, _) = https::post(&mut senders[at], MUTATE_PODS, body.clone())
                    .await
                    .expect("a review answered");
                latencies[at].push(started.elapsed());
                assert_eq!(status, 200, "{}", webhooks[at].0);
            }
        }
        for sorted in &mut latencies {
            sorted.sort();
        }
        let reference = webhooks.iter().position(|(name, _)| *name == "constant");
        for (at, (name, _)) in webhooks.iter().enumerate() {
            let this = &latencies[at];
            let other = reference.filter(|r| *r != at).map(|r| &latencies[r]);
            let delta = |q: f64| match other {
                Some(other) => format!(
                    "{:+.3}",
                    (percentile(this, q).as_secs_f64() - percentile(other, q).as_secs_f64())
                        * 1000.0
                ),
                None => "-".into(),
            };
            let interval = other.map_or_else(|| "-".into(), |other| interval_ms(this, other, 99.0));
            println!(
                "  {:>7} {:<15} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9} {:>9} {:>15}",
                size,
                name,
                this.len(),
                percentile(this, 50.0).as_secs_f64() * 1000.0,
                percentile(this, 90.0).as_secs_f64() * 1000.0,
                percentile(this, 99.0).as_secs_f64() * 1000.0,
                this.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
                delta(50.0),
                delta(99.0),
                interval
            );
        }
    }
}

/// The bootstrap interval of the difference of the `q`-th percentiles, `[lo, hi]` in ms.
fn interval_ms(this: &[Duration], reference: &[Duration], q: f64) -> String {
    let (lo, hi) = bootstrap_delta_ms(this, reference, q, 2_000);
    format!("[{lo:+.2}, {hi:+.2}]")
}

fn print_latencies(samples: &Samples, chains: &[Chain], rounds: usize, requests: usize) {
    println!(
        "\npod create (server-side dry run) through the real API server, {rounds} round(s) × {requests} requests per chain, interleaved request by request; at the end: {}",
        measure::load()
    );
    println!(
        "  {:>7} {:>7} {:<10} {:<15} {:>6} {:>8} {:>8} {:>8} {:>9} {:>9} {:>15} {:>6}   p50 per round",
        "cluster",
        "claims",
        "mode",
        "chain",
        "n",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "Δp50 ms",
        "Δp99 ms",
        "Δp99 95% CI",
        "÷seed"
    );
    let seed = chains.iter().position(|c| c.name == "kyverno-seed");
    let all = |key: &(usize, usize, Mode, usize)| -> Option<Vec<Duration>> {
        let mut all: Vec<Duration> = samples.get(key)?.iter().flatten().copied().collect();
        all.sort();
        Some(all)
    };
    for (&(total, size, mode, chain), per_round) in samples {
        let this = all(&(total, size, mode, chain)).unwrap();
        let p = |q| percentile(&this, q);
        // The reference chain's latencies in the same cell, collected and sorted once.
        let other = reference(chains, chain).and_then(|r| all(&(total, size, mode, r)));
        let delta = |q: f64| {
            other.as_ref().map_or_else(
                || "-".into(),
                |other| {
                    let (a, b) = (percentile(&this, q), percentile(other, q));
                    format!("{:+.2}", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
                },
            )
        };
        let interval = other
            .as_ref()
            .map_or_else(|| "-".into(), |other| interval_ms(&this, other, 99.0));
        let ratio = seed
            .filter(|s| *s != chain && chains[chain].name.starts_with("kyverno-"))
            .and_then(|s| all(&(total, size, mode, s)))
            .map(|seed| {
                let ratio =
                    percentile(&this, 50.0).as_secs_f64() / percentile(&seed, 50.0).as_secs_f64();
                format!("{ratio:.2}")
            })
            .unwrap_or_else(|| "-".into());
        let by_round: Vec<String> = per_round
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.sort();
                ms(percentile(&r, 50.0))
            })
            .collect();
        println!(
            "  {:>7} {:>7} {:<10} {:<15} {:>6} {:>8} {:>8} {:>8} {:>9} {:>9} {:>15} {:>6}   {}",
            total,
            size,
            mode.to_string(),
            chains[chain].name,
            this.len(),
            ms(p(50.0)),
            ms(p(90.0)),
            ms(p(99.0)),
            delta(50.0),
            delta(99.0),
            interval,
            ratio,
            by_round.join(" ")
        );
    }
    println!(
        "  (Δ: against the constant webhook, for Kyverno's chains against the Kyverno no-op policy, in the same cells; 95% CI: bootstrap interval of Δp99 (2,000 resamples): how far it could move with another run this size; ÷seed: p50 over the seed policy's)"
    );
}
