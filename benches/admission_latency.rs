//! End-to-end admission latency through the real API server: pod creates (server-side dry
//! run, so nothing is stored) in namespaces holding 2, 2,001 and 20,000 labelled claims, each
//! sent through one of several admission chains, interleaved request by request so that load on
//! the machine touches every chain alike. Sequential (one keep-alive connection) and 8-way.
//!
//! Chains ([`chains`]), each chosen by the pod label `bench-chain: <name>`:
//! - `none`: no webhook is called: the API server's own floor;
//! - `constant`: a webhook on the same TLS stack as ours (axum, axum-server, rustls with ring,
//!   a certificate of the same CA), registered exactly as the chart registers ours, answering
//!   every review with the same patch ours returns for the pod, without reading the request
//!   beyond its uid: the API server's cost of calling any webhook;
//! - `userns-labeler`: the real binary (`userns-labeler run`, controller and webhook), as the
//!   chart's least-privileged user, registered the same way.
//!
//! "Registered the same way": the chart's MutatingWebhookConfiguration
//! (`deploy/manifests/userns-labeler.yaml`) with its client config pointed at the server by URL
//! and the chain's label added to its objectSelector. Another chain (say a Kyverno admission
//! server) is one more [`Chain`] entry in [`chains`]: it starts its server, registers it for pods
//! labelled with its name, and returns a guard that tears it down.
//!
//! Run: `cargo bench --bench admission_latency` (needs `make control-plane`). Environment:
//! `USERNS_ADMISSION_SIZES` (claims per namespace, default `2,2001,20000`),
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
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use userns_labeler_test_support::control_plane::{self, CertPair, ControlPlane};
use userns_labeler_test_support::labeler::{self, Labeler};
use userns_labeler_test_support::measure::{self, ms, percentile};
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
    /// What the labeler's webhook answered for the benchmark pod: the constant chain's patch.
    pub patch: Mutex<Option<Value>>,
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

/// A server's own runtime, stopped without waiting when dropped (also inside another runtime).
struct ServerRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// One admission chain: its name (the value of the pod label `bench-chain`) and how to start
/// it. Chains start in the order listed; a later one may use what an earlier one left in
/// [`Env`] (the constant chain uses the labeler's patch).
pub struct Chain {
    pub name: &'static str,
    pub start: for<'a> fn(&'a Env) -> BoxFuture<'a, Running>,
}

/// The chains measured, in the order they start.
fn chains() -> Vec<Chain> {
    vec![
        Chain {
            name: "none",
            start: |_| async { Running::new(()) }.boxed(),
        },
        Chain {
            name: "userns-labeler",
            start: |env| start_labeler(env).boxed(),
        },
        Chain {
            name: "constant",
            start: |env| start_constant(env).boxed(),
        },
    ]
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
        &["--tls-cert-file", &cert, "--tls-key-file", &key],
    );
    labeler.wait_ready(Duration::from_secs(60));
    let claims: usize = env.namespaces.iter().map(|(n, _)| n).sum();
    labeler::eventually("every claim labelled", Duration::from_secs(600), || async {
        let labelled = labeler.metric(
            "userns_labeler_objects",
            &["kind=\"claim\"", "value=\"true\""],
        );
        (labelled as usize >= claims).then_some(())
    })
    .await;
    let url = format!("https://{}{MUTATE_PODS}", labeler.webhook);
    register(env, &webhook_configuration(env, "userns-labeler", &url)).await;
    // The patch it answers for the benchmark pod, for the constant chain.
    let (_, ns) = &env.namespaces[0];
    let answered = dry_run_review(&labeler, env.cp.ca_pem(), ns).await;
    *env.patch.lock().unwrap() = Some(answered);
    Running::new(labeler)
}

/// Sends the benchmark pod's review to the labeler directly: the response's `patch`, decoded.
async fn dry_run_review(labeler: &Labeler, ca_pem: &str, ns: &str) -> Value {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000000",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": pod("userns-labeler"),
            "dryRun": true,
        }
    });
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
/// with only its uid copied in. Its own runtime, with as many workers as the labeler's.
async fn start_constant(env: &Env) -> Running {
    let patch = env
        .patch
        .lock()
        .unwrap()
        .clone()
        .expect("the labeler chain starts first");
    let patch =
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&patch).unwrap());
    let template = Arc::new(
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": "UID-PLACEHOLDER", "allowed": true,
                         "patchType": "JSONPatch", "patch": patch},
        }))
        .unwrap(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (cert, key) = (env.cert.cert_pem.clone(), env.cert.key_pem.clone());
    runtime.spawn(async move {
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem(cert.into(), key.into())
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
    let url = format!("https://{addr}{MUTATE_PODS}");
    register(env, &webhook_configuration(env, "constant", &url)).await;
    Running::new(ServerRuntime(Some(runtime)))
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

fn claim(i: usize) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": format!("claim-{i}"),
                     "annotations": {"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}},
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

/// Latencies by (claims in the namespace, mode, chain), and per round.
type Samples = BTreeMap<(usize, Mode, usize), Vec<Vec<Duration>>>;

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
    let sizes: Vec<usize> = list("USERNS_ADMISSION_SIZES", "2,2001,20000")
        .iter()
        .map(|s| s.parse().expect("USERNS_ADMISSION_SIZES"))
        .collect();
    let rounds: usize = var("USERNS_ADMISSION_ROUNDS").map_or(3, |v| v.parse().unwrap());
    let requests: usize = var("USERNS_ADMISSION_REQUESTS").map_or(300, |v| v.parse().unwrap());
    let parallel: usize = var("USERNS_ADMISSION_CONCURRENCY").map_or(8, |v| v.parse().unwrap());
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
            let api: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), ns.name());
            futures::stream::iter(0..size.max(2))
                .map(|i| {
                    let api = api.clone();
                    async move { api.create(&PostParams::default(), &claim(i)).await.map(|_| ()) }
                })
                .buffer_unordered(32)
                .try_collect::<Vec<()>>()
                .await
                .expect("claims");
            eprintln!("{size} claims in {} in {:.1?}", ns.name(), t.elapsed());
            namespaces.push((size.max(2), ns.name().to_string()));
            guards.push(ns);
        }
        let env = Env {
            cp,
            admin: admin.clone(),
            cert: cp.issue_server_cert(&["127.0.0.1", "localhost"]),
            labeler_ns: labeler_ns.name().to_string(),
            namespaces,
            patch: Mutex::new(None),
        };
        // Every chain's namespaces see every chain's webhook configuration; the pod label picks.
        let mut running = Vec::new();
        for chain in &chains {
            running.push((chain.start)(&env).await);
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
                    enabled,
                    chain.name != "none",
                    "chain {} in {ns}: hostUsers {host_users}",
                    chain.name
                );
            }
        }

        let modes = [Mode::Sequential, Mode::Parallel(parallel)];
        let mut samples: Samples = BTreeMap::new();
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
                            .entry((size, mode, chain))
                            .or_default()
                            .push(latencies);
                    }
                }
            }
            eprintln!("round {} done; {}", round + 1, measure::load());
        }

        println!(
            "\npod create (server-side dry run) through the real API server, {rounds} round(s) × {requests} requests per chain, interleaved request by request; at the end: {}",
            measure::load()
        );
        println!(
            "  {:>7} {:<10} {:<15} {:>6} {:>8} {:>8} {:>8} {:>9} {:>9}   p50 per round",
            "claims", "mode", "chain", "n", "p50 ms", "p90 ms", "p99 ms", "Δp50 ms", "Δp99 ms"
        );
        let reference = chains.iter().position(|c| c.name == "constant");
        for (&(size, mode, chain), rounds) in &samples {
            let sorted = |v: &mut Vec<Duration>| v.sort();
            let mut all: Vec<Duration> = rounds.iter().flatten().copied().collect();
            sorted(&mut all);
            let p = |q| percentile(&all, q);
            let delta = |q: f64| {
                reference
                    .filter(|r| *r != chain)
                    .and_then(|r| samples.get(&(size, mode, r)))
                    .map(|other| {
                        let mut other: Vec<Duration> = other.iter().flatten().copied().collect();
                        other.sort();
                        let (a, b) = (percentile(&all, q), percentile(&other, q));
                        format!("{:+.2}", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
                    })
                    .unwrap_or_else(|| "-".into())
            };
            let per_round: Vec<String> = rounds
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.sort();
                    ms(percentile(&r, 50.0))
                })
                .collect();
            println!(
                "  {:>7} {:<10} {:<15} {:>6} {:>8} {:>8} {:>8} {:>9} {:>9}   {}",
                size,
                mode.to_string(),
                chains[chain].name,
                all.len(),
                ms(p(50.0)),
                ms(p(90.0)),
                ms(p(99.0)),
                delta(50.0),
                delta(99.0),
                per_round.join(" ")
            );
        }
        println!("  (Δ: against the constant webhook in the same cells)");
        drop(running);
        drop(guards);
    });
}
