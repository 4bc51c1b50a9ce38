//! Load benchmark of the webhook over TLS on loopback (not a timed test).
//!
//! Two servers on the same stack (axum + axum-server, rustls with ring, one certificate):
//! - `webhook`: the real router (`serve_tls`), caches holding 10,000 claims, 1,000 volumes, three
//!   classes and 100 namespaces, deciding realistic pods (2–4 KiB reviews with managedFields);
//! - `trivial`: the same stack answering every POST with one constant AdmissionReview — the
//!   limit of the stack on this machine.
//!
//! For each: fixed-rate open-loop runs (requests are released at their rate whatever the
//! responses do, and latency is measured from the release, so queueing behind busy connections
//! counts), then a closed-loop run with many keep-alive connections for the maximum throughput.
//!
//! ```sh
//! cargo bench --bench webhook_load
//! WEBHOOK_LOAD_RATES=500,1000,2000 WEBHOOK_LOAD_SECONDS=10 cargo bench --bench webhook_load
//! ```
//! Environment: `WEBHOOK_LOAD_RATES` (requests/s, comma-separated), `WEBHOOK_LOAD_SECONDS`
//! (per run), `WEBHOOK_LOAD_CONNECTIONS` (open-loop pool), `WEBHOOK_LOAD_MAX_CONNECTIONS`
//! (closed loop), `WEBHOOK_LOAD_MAX_ROUNDS` (alternating closed-loop rounds per server, median
//! reported), `WEBHOOK_LOAD_ONLY=webhook|trivial`, `WEBHOOK_LOAD_PODS=minimal` (one container
//! and one claim, ~1 KiB reviews, instead of the realistic ones), `WEBHOOK_LOAD_SERVER_THREADS` /
//! `WEBHOOK_LOAD_CLIENT_THREADS` (tokio workers of each side; both share the machine's cores),
//! `WEBHOOK_LOAD_HANDLER_REQUESTS` (requests of the one-thread CPU breakdown, default 20,000) and
//! `WEBHOOK_LOAD_TRIVIAL_CPU_US` (the trivial server first spins that long per request: a
//! calibration), `WEBHOOK_LOAD_HANDLER_ONLY=1` (stop after that breakdown), `WEBHOOK_LOAD_PROFILE=handler|
//! fast|skip|typed|mutate` (only run that stage `WEBHOOK_LOAD_HANDLER_REQUESTS` times, for a profiler:
//! `perf record --call-graph dwarf` on the bench binary).
//! Under `cargo test --all-targets` (no `--bench` argument) it only makes a one-second smoke
//! run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::core::admission::AdmissionReview;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use userns_labeler::webhook::lean::decode_pod_create;
use userns_labeler::webhook::{
    AdmissionSettings, MUTATE_PODS_PATH, Mode, Outcome, PodCreate, SelfSigned, ServerTls,
    WebhookState, mutate_pod, router, serve_tls,
};
use userns_labeler_test_support::webhook::{
    caches, class, from_json, https, namespace, review, state,
};

const NAMESPACES: usize = 100;
const CLAIMS: usize = 10_000;
const BODIES: usize = 2_000;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic fixtures without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Claims of namespace `ns-N`: `data-M`. 70 % Longhorn RWO through the default class (no
/// class named), 20 % EBS, 10 % NFS; every tenth bound to a CSI PV.
fn cluster() -> (Vec<PersistentVolumeClaim>, Vec<PersistentVolume>) {
    let mut claims = Vec::with_capacity(CLAIMS);
    let mut volumes = Vec::new();
    for i in 0..CLAIMS {
        let ns = format!("ns-{}", i % NAMESPACES);
        let name = format!("data-{}", i / NAMESPACES);
        let mut spec = json!({"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "10Gi"}}});
        match i % 10 {
            0..=6 => {}
            7 | 8 => spec["storageClassName"] = json!("ebs"),
            _ => {
                spec["storageClassName"] = json!("nfs");
                spec["accessModes"] = json!(["ReadWriteMany"]);
            }
        }
        if i % 10 == 3 {
            let pv = format!("pvc-{i:08}");
            spec["volumeName"] = json!(pv);
            volumes.push(from_json(json!({
                "metadata": {"name": pv},
                "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"},
                         "csi": {"driver": "driver.longhorn.io", "volumeHandle": pv, "fsType": "ext4"},
                         "claimRef": {"namespace": ns, "name": name}},
            })));
        }
        claims.push(from_json(json!({
            "metadata": {"name": name, "namespace": ns,
                         "annotations": {"volume.kubernetes.io/storage-provisioner": "driver.longhorn.io"}},
            "spec": spec,
        })));
    }
    (claims, volumes)
}

/// A realistic pod CREATE review: labels, a last-applied annotation, managedFields, two
/// containers with env, probes and mounts, a projected token, a configMap and 1–3 claims.
fn pod_review(rng: &mut Rng, i: usize) -> Vec<u8> {
    let ns = format!("ns-{}", rng.below(NAMESPACES));
    let claims: Vec<Value> = (0..1 + rng.below(3))
        .map(|k| {
            json!({"name": format!("data{k}"),
                   "persistentVolumeClaim": {"claimName": format!("data-{}", rng.below(CLAIMS / NAMESPACES))}})
        })
        .collect();
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": "app-config"}}),
        json!({"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}),
    ];
    volumes.extend(claims);
    let container = |name: &str| {
        json!({"name": name, "image": format!("registry.example.com/team/{name}:1.{i}"),
            "args": ["--config=/etc/app/config.yaml", "--listen=:8080"],
            "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 10},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}, {"name": "data0", "mountPath": "/data"},
                             {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true, "runAsUser": 1000},
            "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"})
    };
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("app-{i}-7d9f8b6c4-x{i:04}"), "generateName": format!("app-{i}-7d9f8b6c4-"),
            "labels": {"app.kubernetes.io/name": "app", "app.kubernetes.io/instance": format!("app-{i}"), "pod-template-hash": "7d9f8b6c4"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-27T06:00:00Z", "prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("app-{i}-7d9f8b6c4"),
                                 "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "time": "2026-11-27T06:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app.kubernetes.io/name": {}}},
                             "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}],
        },
        "spec": {
            "containers": [container("app"), container("sidecar")],
            "volumes": volumes,
            "serviceAccountName": "default", "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "securityContext": {"fsGroup": 1000}, "terminationGracePeriodSeconds": 30,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        },
    });
    serde_json::to_vec(&review("CREATE", &ns, &pod)).unwrap()
}

/// CPU time consumed by the calling thread so far (`/proc/thread-self/schedstat`): robust
/// against other processes on the machine, unlike wall time.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// CPU time so far of this process's threads named `name` (the tokio workers of one runtime).
fn threads_cpu(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse().ok()
        })
        .map(Duration::from_nanos)
        .sum()
}

/// The trivial server: every POST gets the same AdmissionReview.
/// With `WEBHOOK_LOAD_TRIVIAL_CPU_US=N` it first spins for N µs: a calibration of how much a
/// given handler cost lowers the maximum throughput on this machine.
fn trivial_router() -> axum::Router {
    let constant = constant_review();
    let spin = spin_iterations(env_or("WEBHOOK_LOAD_TRIVIAL_CPU_US", 0));
    axum::Router::new().route(
        MUTATE_PODS_PATH,
        post(move |_body: Bytes| {
            let constant = constant.clone();
            async move {
                spin_for(spin);
                ([("content-type", "application/json")], constant)
            }
        }),
    )
}

/// Busy work: `iterations` rounds of a loop the optimiser cannot remove.
fn spin_for(iterations: u64) {
    let mut x = 0u64;
    for i in 0..iterations {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    }
    std::hint::black_box(x);
}

/// How many rounds of [`spin_for`] take `micros` of this thread's CPU time (measured, not
/// wall time: preemption on a busy machine does not shorten the work).
fn spin_iterations(micros: u64) -> u64 {
    if micros == 0 {
        return 0;
    }
    const PROBE: u64 = 20_000_000;
    let started = thread_cpu();
    spin_for(PROBE);
    let per_iteration = (thread_cpu() - started).as_secs_f64() / PROBE as f64;
    (micros as f64 * 1e-6 / per_iteration) as u64
}

/// One thread's CPU time per request through a router without network or TLS.
fn handler_cpu(router: &axum::Router, bodies: &[Bytes], n: usize) -> Duration {
    use tower::ServiceExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let started = thread_cpu();
        for i in 0..n {
            let request = http::Request::post(MUTATE_PODS_PATH)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(bodies[i % bodies.len()].clone()))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            std::hint::black_box(body);
        }
        (thread_cpu() - started) / n as u32
    })
}

/// Runs one stage of the request path `n` times on this thread and prints its CPU time per
/// request, for a profiler to look at that stage alone: `handler` (the router, no network),
/// `fast` (the fast-path decode), `skip` (JSON syntax only, the floor of any serde_json decode), `typed` (the full typed decode), `mutate` (deciding and
/// building the patch).
fn profile_stage(stage: &str, state: &Arc<WebhookState>, bodies: &[Bytes], n: usize) {
    let started = thread_cpu();
    match stage {
        "handler" => {
            let router = router(state.clone(), AdmissionSettings::default());
            println!("{:.1?}", handler_cpu(&router, bodies, n));
            return;
        }
        "fast" => {
            for i in 0..n {
                let request = decode_pod_create(&bodies[i % bodies.len()], &state.keys);
                std::hint::black_box(request.unwrap());
            }
        }
        "skip" => {
            for i in 0..n {
                let any: serde::de::IgnoredAny =
                    serde_json::from_slice(&bodies[i % bodies.len()]).unwrap();
                std::hint::black_box(any);
            }
        }
        "typed" => {
            for i in 0..n {
                let review: AdmissionReview<Pod> =
                    serde_json::from_slice(&bodies[i % bodies.len()]).unwrap();
                std::hint::black_box(review);
            }
        }
        "mutate" => {
            let requests: Vec<PodCreate> = bodies
                .iter()
                .map(|body| decode_pod_create(body, &state.keys).unwrap())
                .collect();
            let started = thread_cpu();
            for i in 0..n {
                let request = &requests[i % requests.len()];
                std::hint::black_box(mutate_pod(request, state, Mode::Enforce));
            }
            println!("{:.1?}", (thread_cpu() - started) / n as u32);
            return;
        }
        other => {
            panic!("WEBHOOK_LOAD_PROFILE={other}: expected handler, fast, skip, typed or mutate")
        }
    }
    println!("{:.1?}", (thread_cpu() - started) / n as u32);
}

/// A minimal pod CREATE review (one container, one claim, no managedFields): shows how much of
/// the gap to the trivial server is the size of the object to decode.
fn minimal_pod_review(rng: &mut Rng, i: usize) -> Vec<u8> {
    let ns = format!("ns-{}", rng.below(NAMESPACES));
    let claim = format!("data-{}", rng.below(CLAIMS / NAMESPACES));
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("app-{i}")},
        "spec": {
            "containers": [{"name": "app", "image": "registry.example.com/app:1.0"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    });
    serde_json::to_vec(&review("CREATE", &ns, &pod)).unwrap()
}

/// The trivial server's constant answer.
fn constant_review() -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true, "status": {}},
        }))
        .unwrap(),
    )
}

#[derive(Default)]
struct Run {
    latencies_us: Vec<u32>,
    errors: usize,
    elapsed: Duration,
    /// CPU time of the server's and the client's worker threads during the run (closed loop).
    server_cpu: Duration,
    client_cpu: Duration,
}

impl Run {
    /// One request: its latency since `since` when it succeeded, else an error.
    fn record(&mut self, ok: bool, since: Instant) {
        if ok {
            let micros = since.elapsed().as_micros().min(u32::MAX as u128) as u32;
            self.latencies_us.push(micros);
        } else {
            self.errors += 1;
        }
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[index] as f64 / 1000.0
    }
    fn throughput(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }
    fn finish(mut self) -> Run {
        self.latencies_us.sort_unstable();
        self
    }
}

struct Target {
    addr: SocketAddr,
    ca_pem: String,
    bodies: Arc<Vec<Bytes>>,
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>;

async fn connections(target: &Target, n: usize) -> Vec<Sender> {
    let config = https::trusting(&target.ca_pem);
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        senders.push(
            https::connect(target.addr, "localhost", config.clone())
                .await
                .expect("connect"),
        );
    }
    senders
}

/// Open loop: request `i` is released at `start + i / rate`, whether or not earlier requests
/// have been answered; latency runs from its release, so queueing behind busy connections
/// counts.
async fn open_loop(target: &Target, rate: u32, seconds: u64, pool: usize) -> Run {
    let total = rate as u64 * seconds;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let (tx, rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for mut sender in connections(target, pool).await {
        let rx = rx.clone();
        let bodies = target.bodies.clone();
        workers.push(tokio::spawn(async move {
            let mut run = Run::default();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((i, due)) = next else { break };
                let body = bodies[i as usize % bodies.len()].clone();
                let ok = https::post(&mut sender, MUTATE_PODS_PATH, body)
                    .await
                    .is_ok_and(|(status, _)| status.is_success());
                run.record(ok, due);
            }
            run
        }));
    }
    let start = Instant::now();
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        // The clock starts when the request is released (tokio timers fire up to 1 ms after
        // `due`; that is the generator's lag, not the server's). Waiting for a free
        // connection still counts.
        tx.send((i, Instant::now())).unwrap();
    }
    drop(tx);
    let mut run = join(workers).await;
    run.elapsed = start.elapsed();
    run.finish()
}

/// The workers' runs, merged.
async fn join(workers: Vec<tokio::task::JoinHandle<Run>>) -> Run {
    let mut run = Run::default();
    for worker in workers {
        let part = worker.await.unwrap();
        run.latencies_us.extend(part.latencies_us);
        run.errors += part.errors;
    }
    run
}

/// Closed loop: each connection sends its next request as soon as the previous one returns.
async fn closed_loop(target: &Target, seconds: u64, pool: usize) -> Run {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut workers = Vec::new();
    for (c, mut sender) in connections(target, pool).await.into_iter().enumerate() {
        let bodies = target.bodies.clone();
        workers.push(tokio::spawn(async move {
            let mut run = Run::default();
            let mut i = c * 997;
            while Instant::now() < deadline {
                let body = bodies[i % bodies.len()].clone();
                i += 1;
                let sent = Instant::now();
                let ok = https::post(&mut sender, MUTATE_PODS_PATH, body)
                    .await
                    .is_ok_and(|(status, _)| status.is_success());
                run.record(ok, sent);
            }
            run
        }));
    }
    let mut run = join(workers).await;
    run.elapsed = start.elapsed();
    run.finish()
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // As in production: a subscriber at info, so per-admission debug events are filtered out
    // the way they are in a deployment (output discarded).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .try_init();

    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it:
    // then only a one-second smoke run, so the test suite stays quick.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rates: Vec<u32> = if smoke {
        vec![100]
    } else {
        std::env::var("WEBHOOK_LOAD_RATES")
            .unwrap_or_else(|_| "500,1000,2000".into())
            .split(',')
            .filter_map(|r| r.trim().parse().ok())
            .collect()
    };
    let seconds: u64 = if smoke {
        1
    } else {
        env_or("WEBHOOK_LOAD_SECONDS", 10)
    };
    let pool: usize = env_or("WEBHOOK_LOAD_CONNECTIONS", 16);
    let max_pool: usize = env_or("WEBHOOK_LOAD_MAX_CONNECTIONS", 32);
    let max_rounds: usize = if smoke {
        1
    } else {
        env_or("WEBHOOK_LOAD_MAX_ROUNDS", 3)
    };
    let minimal = std::env::var("WEBHOOK_LOAD_PODS").is_ok_and(|v| v == "minimal");
    let server_threads: usize = env_or("WEBHOOK_LOAD_SERVER_THREADS", 2);
    let client_threads: usize = env_or("WEBHOOK_LOAD_CLIENT_THREADS", 2);

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name("server")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();

    let (claims, volumes) = cluster();
    let state = state(caches(
        claims,
        volumes,
        vec![
            class("longhorn", "driver.longhorn.io", true),
            class("ebs", "ebs.csi.aws.com", false),
            class("nfs", "nfs.csi.k8s.io", false),
        ],
        (0..NAMESPACES)
            .map(|n| namespace(&format!("ns-{n}"), &[]))
            .collect(),
    ));
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..BODIES)
            .map(|i| {
                Bytes::from(if minimal {
                    minimal_pod_review(&mut rng, i)
                } else {
                    pod_review(&mut rng, i)
                })
            })
            .collect(),
    );
    let mean_body = bodies.iter().map(Bytes::len).sum::<usize>() / bodies.len();

    let pair = SelfSigned::generate(&[]).unwrap();
    let shutdown = CancellationToken::new();
    let (webhook_addr, trivial_addr) = server_rt.block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let webhook_addr = listener.local_addr().unwrap();
        let tls = ServerTls::from_pem(&pair.cert_pem, &pair.key_pem)
            .await
            .unwrap();
        tokio::spawn(serve_tls(
            listener,
            tls.clone(),
            state.clone(),
            AdmissionSettings::default(),
            shutdown.clone(),
        ));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let trivial_addr = listener.local_addr().unwrap();
        let trivial = trivial_router();
        let server = axum_server::from_tcp_rustls(listener, tls.rustls_config().clone()).unwrap();
        tokio::spawn(async move { server.serve(trivial.into_make_service()).await });
        (webhook_addr, trivial_addr)
    });

    let targets = [
        (
            "webhook",
            Target {
                addr: webhook_addr,
                ca_pem: pair.ca_pem.clone(),
                bodies: bodies.clone(),
            },
        ),
        (
            "trivial",
            Target {
                addr: trivial_addr,
                ca_pem: pair.ca_pem.clone(),
                bodies: bodies.clone(),
            },
        ),
    ];

    println!(
        "webhook load: {CLAIMS} claims, {} volumes, {NAMESPACES} namespaces cached; {BODIES} distinct reviews, mean {mean_body} bytes",
        state.caches.volumes.len()
    );
    println!(
        "{} CPU(s); server {server_threads} worker thread(s), client {client_threads}; {seconds} s per run; open loop over {pool} keep-alive connections, closed loop over {max_pool}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let only: Option<String> = std::env::var("WEBHOOK_LOAD_ONLY").ok();
    let skip = |name: &str| only.as_deref().is_some_and(|o| o != name);
    // Where a webhook request's CPU goes, on one thread, before any load.
    let n = if smoke {
        200
    } else {
        env_or("WEBHOOK_LOAD_HANDLER_REQUESTS", 20_000)
    };
    if let Ok(stage) = std::env::var("WEBHOOK_LOAD_PROFILE") {
        profile_stage(&stage, &state, &bodies, n);
        return;
    }
    let webhook_handler = handler_cpu(
        &router(state.clone(), AdmissionSettings::default()),
        &bodies,
        n,
    );
    let trivial_handler = handler_cpu(&trivial_router(), &bodies, n);
    let started = thread_cpu();
    for i in 0..n {
        let review: AdmissionReview<Pod> =
            serde_json::from_slice(&bodies[i % bodies.len()]).unwrap();
        std::hint::black_box(review);
    }
    let parse = (thread_cpu() - started) / n as u32;
    let started = thread_cpu();
    for i in 0..n {
        let request = decode_pod_create(&bodies[i % bodies.len()], &state.keys).unwrap();
        std::hint::black_box(request);
    }
    let fast_parse = (thread_cpu() - started) / n as u32;
    let requests: Vec<PodCreate> = bodies
        .iter()
        .map(|body| decode_pod_create(body, &state.keys).unwrap())
        .collect();
    let started = thread_cpu();
    for i in 0..n {
        std::hint::black_box(mutate_pod(
            &requests[i % requests.len()],
            &state,
            Mode::Enforce,
        ));
    }
    let decide = (thread_cpu() - started) / n as u32;
    drop(requests);
    println!(
        "CPU per request on one thread, no network: webhook handler {webhook_handler:.1?} \
         (decoding the review: {fast_parse:.1?} on the fast path, {parse:.1?} into the full \
         AdmissionReview<Pod>; deciding and building the patch {decide:.1?}); trivial handler \
         {trivial_handler:.1?}"
    );
    if std::env::var("WEBHOOK_LOAD_HANDLER_ONLY").is_ok_and(|v| v == "1") {
        return;
    }
    println!("load average before the runs: {}", load_average());

    let mut results: Vec<(String, [Option<Run>; 2])> = Vec::new();
    client_rt.block_on(async {
        for (name, target) in &targets {
            if skip(name) {
                continue;
            }
            // Warm-up: connections, TLS sessions, allocator, caches.
            if !smoke {
                let _ = open_loop(target, 500, 2, pool).await;
            }
        }
        for &rate in &rates {
            let mut row: [Option<Run>; 2] = [None, None];
            for (k, (name, target)) in targets.iter().enumerate() {
                if !skip(name) {
                    row[k] = Some(open_loop(target, rate, seconds, pool).await);
                }
            }
            results.push((format!("{rate} req/s"), row));
        }
        // The maximum alternates between the servers in several rounds, so that a change in
        // the machine's other load affects both alike; the round with the median throughput
        // of each is reported.
        let mut rounds: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..max_rounds {
            for (k, (name, target)) in targets.iter().enumerate() {
                if !skip(name) {
                    let (server, client) = (threads_cpu("server"), threads_cpu("client"));
                    let mut run = closed_loop(target, seconds, max_pool).await;
                    run.server_cpu = threads_cpu("server") - server;
                    run.client_cpu = threads_cpu("client") - client;
                    rounds[k].push(run);
                }
            }
        }
        let row = rounds.map(|mut runs| {
            runs.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
            let middle = runs.len() / 2;
            (!runs.is_empty()).then(|| runs.swap_remove(middle))
        });
        results.push((format!("max (median of {max_rounds})"), row));
    });

    println!();
    println!(
        "| load | webhook p50 ms | webhook p99 ms | webhook req/s | trivial p50 ms | trivial p99 ms | trivial req/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, row) in &results {
        let cells: Vec<String> = row
            .iter()
            .map(|run| {
                let Some(run) = run.as_ref() else {
                    return "- | - | -".to_string();
                };
                let errors = if run.errors > 0 {
                    format!(" ({} errors)", run.errors)
                } else {
                    String::new()
                };
                format!(
                    "{:.3} | {:.3} | {:.0}{errors}",
                    run.percentile(0.50),
                    run.percentile(0.99),
                    run.throughput()
                )
            })
            .collect();
        println!("| {label} | {} | {} |", cells[0], cells[1]);
    }
    if let Some((_, [Some(webhook), Some(trivial)])) = results.last() {
        println!();
        println!(
            "maximum throughput: webhook {:.0} req/s = {:.0} % of the trivial server's {:.0} req/s",
            webhook.throughput(),
            100.0 * webhook.throughput() / trivial.throughput(),
            trivial.throughput()
        );
        let per_request = |run: &Run, cpu: Duration| {
            cpu.as_secs_f64() * 1e6 / run.latencies_us.len().max(1) as f64
        };
        println!(
            "CPU per request in that run (worker threads, user and kernel): webhook server {:.1} µs \
             + client {:.1} µs; trivial server {:.1} µs + client {:.1} µs",
            per_request(webhook, webhook.server_cpu),
            per_request(webhook, webhook.client_cpu),
            per_request(trivial, trivial.server_cpu),
            per_request(trivial, trivial.client_cpu),
        );
    }
    println!("load average after the runs: {}", load_average());
    let decided: u64 = [Outcome::Enabled, Outcome::Skipped]
        .iter()
        .map(|o| state.metrics.admissions(*o))
        .sum();
    println!(
        "webhook decisions: {} enabled, {} skipped, {} errors",
        state.metrics.admissions(Outcome::Enabled),
        state.metrics.admissions(Outcome::Skipped),
        state.metrics.admissions(Outcome::Error)
    );
    assert!(decided > 0);
    shutdown.cancel();
}
