//! Labelling at scale on the local control plane, each figure side by side with a plain client
//! loop that sends the controller's exact server-side-apply patches at the same concurrency, as
//! the same least-privileged user: the API server's own limit. The loop runs twice: bare, and
//! `loop+watch`, with the labeler's own watches of claims, PVs, classes and namespaces open in
//! this process meanwhile: what the API server allows any controller, which must watch what it
//! writes (each write comes back as a watch event the server encodes and sends).
//!
//! Objects: N claims, each bound to its own PV (`spec.volumeName` / `claimRef`), half on an EBS
//! CSI driver (label `true`) and half on NFS (`false`). Scenarios, in this order per round:
//!
//! - `cold-all`: every claim and PV unlabelled; the controller starts (process start, initial
//!   lists, lease) and labels all 2N; the loop sends the 2N patches, claims first.
//! - `edit`: all labelled; the driver ConfigMap gains a rule that flips the EBS half (N writes,
//!   each a label change the controller announces with an `IdmapSupportChanged` Event, published
//!   after the writes; the `changes` column counts the changes), then loses it again (N more).
//!   The loop sends the same N patches twice.
//! - `cold-claims`: PVs labelled, claims not; the controller starts and labels the N claims.
//!
//! Each run reports the client's CPU (the controller's process, or for the loop this process,
//! its watches included with `loop+watch`), the API server's and etcd's, and for a controller
//! run with `--claim-maps` the claim-map writes it made (`userns_labeler_claim_map_writes_total`).
//!
//! Contenders run interleaved, one after the other within each scenario of each round (the order
//! reversed every other round), so a load change on the machine touches all of them alike. Each
//! timed pass starts from a compacted, defragmented etcd (`ControlPlane::compact_etcd`), so that
//! none inherits the history the ones before it left. Even so the API server's CPU for the same
//! 20,000 patches varies by a third from pass to pass on a busy machine (3.4–5 ms a write): read
//! single rounds with that in mind, and compare contenders within a round; with more than one
//! round, each scenario ends with every round pooled (all writes over all time) and the median
//! of the rounds' percentages, the figures to judge a target by. The
//! controller's resident memory is read with nothing of ours in the cluster, after `cold-all`
//! (the peak covers the initial lists) and after `edit`.
//!
//! Run: `cargo bench --bench controller_labelling` (needs `make control-plane`). Environment:
//! - `USERNS_BENCH_CLAIMS` (default 10000): N;
//! - `USERNS_BENCH_ROUNDS` (default 2);
//! - `USERNS_BENCH_CONCURRENCY` (default 16): the loop's requests in flight and the controller's
//!   `--concurrency`;
//! - `USERNS_BENCH_SCENARIOS` (default `cold-all,edit,cold-claims`);
//! - `USERNS_BENCH_BINARIES` (optional): more builds to run beside this one, `name=path,…`
//!   (e.g. the previous release);
//! - `USERNS_BENCH_PERF` (optional): a directory; each controller run is recorded there with
//!   `perf record` (no call graphs) while it labels;
//! - `USERNS_BENCH_ARGS` (default `--claim-maps`, as the chart runs it): more flags for every
//!   build, space-separated; set it empty to compare with a build that lacks a flag.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use userns_labeler::capability::{DriverTable, Snapshot, resolve_claim, resolve_volume};
use userns_labeler::controller::DesiredKeys;
use userns_labeler::keys::Keys;
use userns_labeler_test_support::control_plane::{self, ControlPlane};
use userns_labeler_test_support::labeler::{self, Labeler};
use userns_labeler_test_support::measure::{self, Memory};

/// The binary under test (cargo sets this for the root package's tests and benchmarks).
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const FIELD_MANAGER: &str = "userns-labeler";
const CONFIG_MAP: &str = "userns-labeler-drivers";
/// The table edit: EBS becomes unsupported, flipping the EBS half.
const FLIP_RULES: &str = "rules:\n  - driver: ebs.csi.aws.com\n    verdict: false\n    reason: Benchmark edit, EBS marked unsupported.\n";
const NO_RULES: &str = "rules: []\n";
const POLL: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Claim,
    Volume,
}

/// One claim or PV and the keys it should carry under the built-in table and after the edit.
struct Object {
    kind: Kind,
    name: String,
    before: DesiredKeys,
    after: DesiredKeys,
}

impl Object {
    fn flips(&self) -> bool {
        self.before != self.after
    }
}

/// What a pass of the loop applies to each object.
#[derive(Clone, Copy)]
enum Values {
    /// None of our keys (the apply removes them).
    Unlabelled,
    Before,
    After,
}

#[derive(Clone)]
enum Contender {
    /// The plain loop, watched (`true`) or not: watched, the labeler's own watches of claims,
    /// PVs, classes and namespaces (`cache::start`) run in this process meanwhile, so the API
    /// server also sends every write back as a watch event, as it must for any controller.
    Loop {
        watched: bool,
    },
    Binary {
        name: String,
        path: PathBuf,
    },
}

const LOOP: &str = "plain loop";
const WATCHED_LOOP: &str = "loop+watch";

impl Contender {
    fn name(&self) -> &str {
        match self {
            Contender::Loop { watched: false } => LOOP,
            Contender::Loop { watched: true } => WATCHED_LOOP,
            Contender::Binary { name, .. } => name,
        }
    }
}

/// One measured run: writes, how long they took, and the cost on each side.
#[derive(Clone, Default)]
struct Run {
    scenario: &'static str,
    round: usize,
    contender: String,
    writes: u64,
    /// From the start (the process' start for a controller) to the last write.
    total: Duration,
    /// To the last claim's write.
    claims_done: Duration,
    /// A controller's time from its start to /readyz (caches synced).
    ready: Option<Duration>,
    /// A controller's label value changes (`userns_labeler_label_changes_total`). Each queues
    /// an `IdmapSupportChanged` Event, published after the writes at most 20 per second; the
    /// Events sent are not counted here.
    changes: u64,
    /// CPU seconds of the client (the controller, or for the loop this process: its requests,
    /// and with `loop+watch` the watches), and of kube-apiserver + etcd, during the run.
    cpu_client: f64,
    cpu_server: f64,
    /// A controller's claim-map writes and their bytes during the run (`--claim-maps`).
    map_writes: (u64, u64),
}

impl Run {
    fn rate(&self) -> f64 {
        self.writes as f64 / self.total.as_secs_f64()
    }
}

struct Settings {
    n: usize,
    rounds: usize,
    concurrency: usize,
    scenarios: Vec<String>,
    contenders: Vec<Contender>,
    perf: Option<PathBuf>,
    /// Flags given to every build.
    args: Vec<String>,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let number = |k: &str, default: usize| var(k).map_or(default, |v| v.parse().expect(k));
        let mut contenders = vec![
            Contender::Loop { watched: false },
            Contender::Loop { watched: true },
            Contender::Binary {
                name: "this build".into(),
                path: USERNS_LABELER.into(),
            },
        ];
        for entry in var("USERNS_BENCH_BINARIES")
            .iter()
            .flat_map(|v| v.split(','))
        {
            let (name, path) = entry
                .split_once('=')
                .expect("USERNS_BENCH_BINARIES: name=path,…");
            contenders.push(Contender::Binary {
                name: name.into(),
                path: path.into(),
            });
        }
        Settings {
            n: number("USERNS_BENCH_CLAIMS", 10_000),
            rounds: number("USERNS_BENCH_ROUNDS", 2),
            concurrency: number("USERNS_BENCH_CONCURRENCY", 16),
            scenarios: var("USERNS_BENCH_SCENARIOS")
                .unwrap_or_else(|| "cold-all,edit,cold-claims".into())
                .split(',')
                .map(str::to_string)
                .collect(),
            contenders,
            perf: var("USERNS_BENCH_PERF").map(PathBuf::from),
            args: std::env::var("USERNS_BENCH_ARGS")
                .unwrap_or_else(|_| "--claim-maps".into())
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        }
    }
}

/// The cluster side of the benchmark: clients, namespaces, the objects.
struct World {
    cp: &'static ControlPlane,
    /// The least-privileged user's client (the controller's RBAC), for the loop.
    user: Client,
    admin: Client,
    ns: String,
    controller_ns: String,
    kubeconfig: PathBuf,
    objects: Vec<Object>,
    settings: Settings,
}

fn claim(ns: &str, i: usize) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": format!("claim-{i}"), "namespace": ns,
                     "annotations": {"pv.kubernetes.io/bind-completed": "yes",
                                     "volume.kubernetes.io/storage-provisioner": driver(i)}},
        "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"],
                 "volumeName": volume_name(ns, i),
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap()
}

fn volume(ns: &str, i: usize) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": volume_name(ns, i),
                     "annotations": {"pv.kubernetes.io/provisioned-by": driver(i)}},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": "", "persistentVolumeReclaimPolicy": "Delete",
                 "claimRef": {"namespace": ns, "name": format!("claim-{i}")},
                 "csi": {"driver": driver(i), "volumeHandle": format!("vol-{i:08}"),
                         "fsType": "ext4",
                         "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity":
                                              format!("1700000000000-{i}-{}", driver(i))}}}
    }))
    .unwrap()
}

fn driver(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "ebs.csi.aws.com"
    } else {
        "nfs.csi.k8s.io"
    }
}

fn volume_name(ns: &str, i: usize) -> String {
    format!("pv-{ns}-{i}")
}

async fn create_all<K, F>(api: &Api<K>, n: usize, make: F)
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    F: Fn(usize) -> K,
{
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let object = make(i);
            async move {
                api.create(&PostParams::default(), &object)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("objects created");
}

/// Every object with the keys the engine gives it under the built-in table and the edit.
fn judge(claims: Vec<PersistentVolumeClaim>, volumes: Vec<PersistentVolume>) -> Vec<Object> {
    let keys = Keys::default();
    let before = DriverTable::defaults();
    let after = DriverTable::from_operator_yaml(FLIP_RULES, "bench").unwrap();
    let mut snapshot = Snapshot::default();
    volumes.iter().for_each(|v| snapshot.add_volume(v.clone()));
    let mut objects = Vec::new();
    for c in &claims {
        objects.push(Object {
            kind: Kind::Claim,
            name: c.metadata.name.clone().unwrap(),
            before: DesiredKeys::from_verdict(&resolve_claim(c, &snapshot, &before, &keys)),
            after: DesiredKeys::from_verdict(&resolve_claim(c, &snapshot, &after, &keys)),
        });
    }
    for v in &volumes {
        objects.push(Object {
            kind: Kind::Volume,
            name: v.metadata.name.clone().unwrap(),
            before: DesiredKeys::from_verdict(&resolve_volume(v, &snapshot, &before, &keys)),
            after: DesiredKeys::from_verdict(&resolve_volume(v, &snapshot, &after, &keys)),
        });
    }
    objects
}

impl World {
    /// The controller's server-side apply of `values` (or of none of our keys).
    fn patch(&self, object: &Object, values: Values) -> Value {
        let keys = Keys::default();
        let desired = match values {
            Values::Unlabelled => None,
            Values::Before => Some(&object.before),
            Values::After => Some(&object.after),
        };
        let mut metadata = json!({"name": object.name});
        if let Some(d) = desired {
            metadata["labels"] = json!({keys.supported.clone(): d.label});
            let mut annotations = BTreeMap::from([(keys.reason.clone(), d.reason.clone())]);
            if let Some(driver) = &d.driver {
                annotations.insert(keys.driver.clone(), driver.clone());
            }
            metadata["annotations"] = json!(annotations);
        }
        let kind = match object.kind {
            Kind::Claim => {
                metadata["namespace"] = json!(self.ns);
                "PersistentVolumeClaim"
            }
            Kind::Volume => "PersistentVolume",
        };
        json!({"apiVersion": "v1", "kind": kind, "metadata": metadata})
    }

    /// Sends `values` to `objects` (claims first, in the order given) with `concurrency`
    /// requests in flight: (time to the last write, time to the last claim's write).
    async fn apply(&self, objects: &[&Object], values: Values) -> (Duration, Duration) {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.user.clone(), &self.ns);
        let volumes: Api<PersistentVolume> = Api::all(self.user.clone());
        let started = Instant::now();
        let mut claims_done = Duration::ZERO;
        let mut done = futures::stream::iter(objects.iter())
            .map(|object| {
                let (claims, volumes, params) = (&claims, &volumes, &params);
                let body = self.patch(object, values);
                async move {
                    let patch = Patch::Apply(&body);
                    match object.kind {
                        Kind::Claim => claims
                            .patch_metadata(&object.name, params, &patch)
                            .await
                            .map(|_| Kind::Claim),
                        Kind::Volume => volumes
                            .patch_metadata(&object.name, params, &patch)
                            .await
                            .map(|_| Kind::Volume),
                    }
                }
            })
            .buffer_unordered(self.settings.concurrency);
        while let Some(kind) = done.next().await {
            if kind.expect("patch") == Kind::Claim {
                claims_done = started.elapsed();
            }
        }
        (started.elapsed(), claims_done)
    }

    /// [`World::apply`] as one measured loop run: the writes, their times, and the CPU of the
    /// API server and etcd and of this process (the loop's client side) meanwhile.
    async fn timed_apply(&self, objects: &[&Object], values: Values) -> Run {
        let (server, client) = (self.server_cpu(), own_cpu());
        let (total, claims_done) = self.apply(objects, values).await;
        Run {
            writes: objects.len() as u64,
            total,
            claims_done,
            cpu_client: own_cpu() - client,
            cpu_server: self.server_cpu() - server,
            ..Run::default()
        }
    }

    fn all(&self) -> Vec<&Object> {
        self.objects.iter().collect()
    }

    fn of(&self, kind: Kind) -> Vec<&Object> {
        self.objects.iter().filter(|o| o.kind == kind).collect()
    }

    fn flipping(&self) -> Vec<&Object> {
        self.objects.iter().filter(|o| o.flips()).collect()
    }

    async fn set_table(&self, rules: &str) {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": CONFIG_MAP, "namespace": self.controller_ns},
                        "data": {"drivers.yaml": rules}});
        Api::<ConfigMap>::namespaced(self.admin.clone(), &self.controller_ns)
            .patch(
                CONFIG_MAP,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&cm),
            )
            .await
            .expect("driver ConfigMap");
    }

    fn server_cpu(&self) -> f64 {
        measure::control_plane_cpu(self.cp.dir())
    }

    fn start(&self, path: &Path, identity: &str) -> Labeler {
        let concurrency = self.settings.concurrency.to_string();
        let mut args = vec!["--concurrency", &concurrency];
        args.extend(self.settings.args.iter().map(String::as_str));
        Labeler::start_with(
            path,
            &self.kubeconfig,
            &self.controller_ns,
            self.cp.dir(),
            identity,
            &args,
        )
    }
}

/// CPU seconds this process has used (the loop's client side).
fn own_cpu() -> f64 {
    measure::cpu_seconds(std::process::id())
}

/// The claim-map writes (creates, replacements and deletions) and their bytes so far.
fn map_writes(labeler: &Labeler) -> (u64, u64) {
    (
        labeler.metric("userns_labeler_claim_map_writes_total", &[]) as u64,
        labeler.metric("userns_labeler_claim_map_bytes_total", &[]) as u64,
    )
}

fn writes(labeler: &Labeler, kind: &str) -> u64 {
    labeler.metric(
        "userns_labeler_label_writes_total",
        &[&format!("kind=\"{kind}\"")],
    ) as u64
}

/// Polls the controller's write counters until `claims` and `volumes` writes are reached:
/// (time to all, time to the claims), from `since`.
fn wait_writes(
    labeler: &Labeler,
    since: Instant,
    claims: u64,
    volumes: u64,
    timeout: Duration,
) -> (Duration, Duration) {
    let mut claims_done = None;
    loop {
        let (c, v) = (writes(labeler, "claim"), writes(labeler, "volume"));
        if c >= claims && claims_done.is_none() {
            claims_done = Some(since.elapsed());
        }
        if c >= claims && v >= volumes {
            return (since.elapsed(), claims_done.unwrap());
        }
        assert!(
            since.elapsed() < timeout,
            "writes: {c}/{claims} claims, {v}/{volumes} volumes after {timeout:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// Waits until the controller's reconciliations stop for a second (the reconcile-all after it
/// took the lease is over).
fn wait_settled(labeler: &Labeler) {
    let mut last = -1.0;
    let mut quiet_since = Instant::now();
    loop {
        let now = labeler.metric("userns_labeler_reconciles_total", &[]);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `perf record` on `pid` until dropped (SIGINT), when `USERNS_BENCH_PERF` names a directory.
struct Profile(Option<Child>);

impl Profile {
    fn start(dir: Option<&Path>, pid: u32, name: &str) -> Profile {
        Profile(dir.map(|dir| {
            std::fs::create_dir_all(dir).unwrap();
            Command::new("perf")
                .args(["record", "-F", "499", "-p", &pid.to_string(), "-o"])
                .arg(dir.join(format!("{name}.data")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("perf")
        }))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// Memory figures of one controller build.
#[derive(Default, Clone)]
struct MemoryRow {
    empty: Option<Memory>,
    cold: Vec<Memory>,
    /// Started with everything labelled, once settled: the caches and nothing else.
    warm: Vec<Memory>,
    edited: Vec<Memory>,
}

struct Bench {
    world: World,
    runs: Vec<Run>,
    memory: BTreeMap<String, MemoryRow>,
}

impl Bench {
    async fn run_loop(&mut self, scenario: &'static str, round: usize, watched: bool) {
        let w = &self.world;
        let mut runs = Vec::new();
        // Set up before each timed pass, after the untimed ones.
        let watches = || async {
            let shutdown = tokio_util::sync::CancellationToken::new();
            if watched {
                // No subscribers: the controllers' event fan-out is not part of this.
                let (caches, _) = userns_labeler::cache::start(&w.user, &shutdown);
                caches.wait_until_ready().await;
            }
            shutdown.drop_guard()
        };
        match scenario {
            "cold-all" => {
                w.apply(&w.all(), Values::Unlabelled).await;
                w.cp.compact_etcd().await;
                let _watches = watches().await;
                runs.push(w.timed_apply(&w.all(), Values::Before).await);
            }
            "edit" => {
                w.apply(&w.all(), Values::Before).await;
                w.cp.compact_etcd().await;
                let _watches = watches().await;
                for values in [Values::After, Values::Before] {
                    runs.push(w.timed_apply(&w.flipping(), values).await);
                }
            }
            "cold-claims" => {
                w.apply(&w.of(Kind::Volume), Values::Before).await;
                w.apply(&w.of(Kind::Claim), Values::Unlabelled).await;
                w.cp.compact_etcd().await;
                let _watches = watches().await;
                runs.push(w.timed_apply(&w.of(Kind::Claim), Values::Before).await);
            }
            other => panic!("unknown scenario {other}"),
        }
        for run in runs {
            self.record(Run {
                scenario,
                round,
                contender: if watched { WATCHED_LOOP } else { LOOP }.into(),
                ..run
            });
        }
    }

    async fn run_controller(
        &mut self,
        scenario: &'static str,
        round: usize,
        name: &str,
        path: &Path,
    ) {
        let w = &self.world;
        let n = w.settings.n as u64;
        let timeout = Duration::from_secs(60) + Duration::from_millis(20 * n);
        let identity = format!(
            "bench-{}-{scenario}-{round}",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        );
        let perf = w.settings.perf.clone();
        let mut runs = Vec::new();
        match scenario {
            "cold-all" | "cold-claims" => {
                if scenario == "cold-all" {
                    w.apply(&w.all(), Values::Unlabelled).await;
                } else {
                    w.apply(&w.of(Kind::Volume), Values::Before).await;
                    w.apply(&w.of(Kind::Claim), Values::Unlabelled).await;
                }
                w.set_table(NO_RULES).await;
                w.cp.compact_etcd().await;
                let volumes = if scenario == "cold-all" { n } else { 0 };
                let (cpu, started) = (w.server_cpu(), Instant::now());
                let labeler = w.start(path, &identity);
                let ready = started.elapsed();
                let profile = Profile::start(perf.as_deref(), labeler.pid(), &identity);
                let (total, claims_done) = wait_writes(&labeler, started, n, volumes, timeout);
                drop(profile);
                runs.push(Run {
                    writes: n + volumes,
                    total,
                    claims_done,
                    ready: Some(ready),
                    cpu_client: measure::cpu_seconds(labeler.pid()),
                    cpu_server: w.server_cpu() - cpu,
                    map_writes: map_writes(&labeler),
                    ..Run::default()
                });
                std::thread::sleep(Duration::from_secs(2));
                let memory = measure::memory(labeler.pid());
                eprintln!("  {name} ({scenario}): resident {memory:?}");
                if scenario == "cold-all" {
                    self.memory
                        .entry(name.into())
                        .or_default()
                        .cold
                        .push(memory);
                }
                labeler.stop();
            }
            "edit" => {
                w.apply(&w.all(), Values::Before).await;
                w.set_table(NO_RULES).await;
                let labeler = w.start(path, &identity);
                wait_settled(&labeler);
                let warm = measure::memory(labeler.pid());
                eprintln!("  {name} ({scenario}): resident {warm:?}");
                self.memory.entry(name.into()).or_default().warm.push(warm);
                assert_eq!(
                    writes(&labeler, "claim") + writes(&labeler, "volume"),
                    0,
                    "everything was labelled already"
                );
                w.cp.compact_etcd().await;
                let flips = w.flipping();
                let claims = flips.iter().filter(|o| o.kind == Kind::Claim).count() as u64;
                let volumes = flips.len() as u64 - claims;
                for (i, rules) in [FLIP_RULES, NO_RULES].into_iter().enumerate() {
                    let i = i as u64 + 1;
                    let (cpu_c, cpu) = (measure::cpu_seconds(labeler.pid()), w.server_cpu());
                    let changes = labeler.metric("userns_labeler_label_changes_total", &[]);
                    let maps = map_writes(&labeler);
                    let profile =
                        Profile::start(perf.as_deref(), labeler.pid(), &format!("{identity}-{i}"));
                    let started = Instant::now();
                    w.set_table(rules).await;
                    let (total, claims_done) =
                        wait_writes(&labeler, started, i * claims, i * volumes, timeout);
                    drop(profile);
                    runs.push(Run {
                        writes: flips.len() as u64,
                        total,
                        claims_done,
                        changes: (labeler.metric("userns_labeler_label_changes_total", &[])
                            - changes) as u64,
                        cpu_client: measure::cpu_seconds(labeler.pid()) - cpu_c,
                        cpu_server: w.server_cpu() - cpu,
                        map_writes: {
                            let now = map_writes(&labeler);
                            (now.0 - maps.0, now.1 - maps.1)
                        },
                        ..Run::default()
                    });
                    wait_settled(&labeler);
                }
                std::thread::sleep(Duration::from_secs(2));
                let memory = measure::memory(labeler.pid());
                eprintln!("  {name} ({scenario}): resident {memory:?}");
                self.memory
                    .entry(name.into())
                    .or_default()
                    .edited
                    .push(memory);
                labeler.stop();
            }
            other => panic!("unknown scenario {other}"),
        }
        for run in runs {
            self.record(Run {
                scenario,
                round,
                contender: name.into(),
                ..run
            });
        }
    }

    fn record(&mut self, run: Run) {
        eprintln!(
            "  [{}] round {} {:<12} {:>6} writes in {:>8.2?} = {:>5.0}/s (claims done {:.2?}{}), cpu client {:.1} s, apiserver+etcd {:.1} s, claim-map writes {} ({:.1} MiB)",
            measure::load(),
            run.round + 1,
            run.contender,
            run.writes,
            run.total,
            run.rate(),
            run.claims_done,
            run.ready
                .map(|r| format!(", ready {r:.2?}"))
                .unwrap_or_default(),
            run.cpu_client,
            run.cpu_server,
            run.map_writes.0,
            run.map_writes.1 as f64 / (1024.0 * 1024.0),
        );
        self.runs.push(run);
    }

    fn report(&self) -> String {
        let s = &self.world.settings;
        let mut out = String::new();
        writeln!(
            out,
            "\nlabelling at N = {} claims + {} PVs, concurrency {}, {} round(s); at the end: {}",
            s.n,
            s.n,
            s.concurrency,
            s.rounds,
            measure::load()
        )
        .unwrap();
        for scenario in &s.scenarios {
            writeln!(out, "\n{scenario}:").unwrap();
            writeln!(
                out,
                "  {:<3} {:<12} {:>7} {:>10} {:>8} {:>9} {:>9} {:>11} {:>9} {:>7} {:>10} {:>10} {:>11}",
                "rnd",
                "contender",
                "writes",
                "time",
                "writes/s",
                "% of loop",
                "% watched",
                "claims done",
                "ready",
                "changes",
                "cpu client",
                "cpu server",
                "map writes"
            )
            .unwrap();
            let runs: Vec<&Run> = self
                .runs
                .iter()
                .filter(|r| r.scenario == scenario)
                .collect();
            for run in &runs {
                // The loop's runs of the same round, in the same order (edit has two each).
                let nth = runs
                    .iter()
                    .filter(|r| r.round == run.round && r.contender == run.contender)
                    .position(|r| std::ptr::eq(*r, *run))
                    .unwrap();
                let percent = |contender: &str| {
                    runs.iter()
                        .filter(|r| r.round == run.round && r.contender == contender)
                        .nth(nth)
                        .map_or(f64::NAN, |l| 100.0 * run.rate() / l.rate())
                };
                writeln!(
                    out,
                    "  {:<3} {:<12} {:>7} {:>9.2}s {:>8.0} {:>8.0}% {:>8.0}% {:>10.2}s {:>9} {:>7} {:>9.1}s {:>9.1}s {:>11}",
                    run.round + 1,
                    run.contender,
                    run.writes,
                    run.total.as_secs_f64(),
                    run.rate(),
                    percent(LOOP),
                    percent(WATCHED_LOOP),
                    run.claims_done.as_secs_f64(),
                    run.ready
                        .map_or("-".into(), |r| format!("{:.2}s", r.as_secs_f64())),
                    run.changes,
                    run.cpu_client,
                    run.cpu_server,
                    run.map_writes.0
                )
                .unwrap();
            }
            if s.rounds > 1 {
                writeln!(out, "{}", pooled(&runs)).unwrap();
            }
        }
        writeln!(
            out,
            "\nresident memory (MiB): empty cluster; after cold-all ({} objects cached; peak = most ever resident, initial lists included); started with all labelled, settled (warm); after edit",
            2 * s.n
        )
        .unwrap();
        for (name, row) in &self.memory {
            let fmt = |m: &[Memory]| {
                m.iter()
                    .map(|m| format!("{:.1} (peak {:.1})", m.rss_mib, m.peak_mib))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let empty = row.empty.map_or(f64::NAN, |m| m.rss_mib);
            let per_object = |m: &[Memory]| {
                let least = m.iter().map(|m| m.rss_mib).fold(f64::NAN, f64::min);
                (least - empty) * 1024.0 * 1024.0 / (2 * s.n) as f64
            };
            writeln!(
                out,
                "  {name:<12} empty {empty:.1}; cold {}; warm {}; edit {}; above empty per cached object: cold {:.0} B, warm {:.0} B",
                fmt(&row.cold),
                fmt(&row.warm),
                fmt(&row.edited),
                per_object(&row.cold),
                per_object(&row.warm),
            )
            .unwrap();
        }
        out
    }
}

/// Every round of a scenario taken together: per contender, all its writes over all its time,
/// that rate as a percentage of the loops' (pooled the same way), and the median of the
/// per-round percentages. A single pass moves by a fifth or more (see the module's note on the
/// API server's CPU per write); the pooled and median figures are what to judge a target by.
fn pooled(runs: &[&Run]) -> String {
    let mut contenders: Vec<&str> = runs.iter().map(|r| r.contender.as_str()).collect();
    contenders.sort();
    contenders.dedup();
    let rate = |contender: &str, round: Option<usize>| {
        let (writes, seconds) = runs
            .iter()
            .filter(|r| r.contender == contender && round.is_none_or(|n| r.round == n))
            .fold((0u64, 0.0), |(w, t), r| {
                (w + r.writes, t + r.total.as_secs_f64())
            });
        writes as f64 / seconds
    };
    let rounds: Vec<usize> = {
        let mut rounds: Vec<usize> = runs.iter().map(|r| r.round).collect();
        rounds.sort();
        rounds.dedup();
        rounds
    };
    let median_percent = |contender: &str, reference: &str| {
        let mut percents: Vec<f64> = rounds
            .iter()
            .map(|&n| 100.0 * rate(contender, Some(n)) / rate(reference, Some(n)))
            .filter(|p| p.is_finite())
            .collect();
        percents.sort_by(f64::total_cmp);
        match percents.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => percents[n / 2],
            n => (percents[n / 2 - 1] + percents[n / 2]) / 2.0,
        }
    };
    let mut out = format!(
        "  all {} rounds pooled (all writes / all time; median of the rounds' percentages in brackets):",
        rounds.len()
    );
    let (bare, watched) = (rate(LOOP, None), rate(WATCHED_LOOP, None));
    for contender in contenders {
        let pooled = rate(contender, None);
        write!(
            out,
            "\n      {contender:<12} {pooled:>8.0}/s  {:>4.0}% of loop [{:.0}%]  {:>4.0}% of loop+watch [{:.0}%]",
            100.0 * pooled / bare,
            median_percent(contender, LOOP),
            100.0 * pooled / watched,
            median_percent(contender, WATCHED_LOOP),
        )
        .unwrap();
    }
    out
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: build-check only.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "controller_labelling: a benchmark; run it with `cargo bench --bench controller_labelling`"
        );
        return;
    }
    let settings = Settings::from_env();
    control_plane::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cp = control_plane::shared();
        let admin = cp.client().await;
        let controller_ns = cp.namespace("labeler").await;
        let ns = cp.namespace("scale").await;
        let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &controller_ns).await;
        let user = control_plane::client_from_kubeconfig(&kubeconfig).await;
        let n = settings.n;
        let claims: Vec<PersistentVolumeClaim> = (0..n).map(|i| claim(ns.name(), i)).collect();
        let volumes: Vec<PersistentVolume> = (0..n).map(|i| volume(ns.name(), i)).collect();
        let mut bench = Bench {
            world: World {
                cp,
                user,
                admin: admin.clone(),
                ns: ns.name().to_string(),
                controller_ns: controller_ns.name().to_string(),
                kubeconfig,
                objects: judge(claims.clone(), volumes.clone()),
                settings,
            },
            runs: Vec::new(),
            memory: BTreeMap::new(),
        };
        // Copies of the builds, so that a build finishing elsewhere meanwhile (a shared target
        // directory) cannot swap a binary under the benchmark.
        let frozen = cp.dir().join("bench-binaries");
        std::fs::create_dir_all(&frozen).unwrap();
        for (i, contender) in bench.world.settings.contenders.iter_mut().enumerate() {
            if let Contender::Binary { path, .. } = contender {
                let copy = frozen.join(format!("{i}-userns-labeler"));
                // A hard link keeps this build's file even when cargo replaces the name.
                std::fs::hard_link(&*path, &copy)
                    .or_else(|_| std::fs::copy(&*path, &copy).map(|_| ()))
                    .expect("keeping a build");
                *path = copy;
            }
        }
        let w = &bench.world;
        w.set_table(NO_RULES).await;
        eprintln!("{}", measure::load());

        // Each build's memory with nothing of ours in the cluster.
        for contender in &w.settings.contenders {
            if let Contender::Binary { name, path } = contender {
                let labeler = w.start(path, "bench-empty");
                std::thread::sleep(Duration::from_secs(3));
                let memory = measure::memory(labeler.pid());
                eprintln!("  {name} (empty cluster): resident {memory:?}");
                labeler.stop();
                bench.memory.entry(name.clone()).or_default().empty = Some(memory);
            }
        }

        let t = Instant::now();
        create_all(&Api::all(admin.clone()), n, |i| volumes[i].clone()).await;
        create_all(&Api::namespaced(admin.clone(), ns.name()), n, |i| {
            claims[i].clone()
        })
        .await;
        eprintln!(
            "created {n} claims and {n} PVs in {:.1?}; {}",
            t.elapsed(),
            measure::load()
        );

        let scenarios: Vec<&'static str> = bench
            .world
            .settings
            .scenarios
            .iter()
            .map(|s| match s.as_str() {
                "cold-all" => "cold-all",
                "edit" => "edit",
                "cold-claims" => "cold-claims",
                other => panic!("unknown scenario {other}"),
            })
            .collect();
        for round in 0..bench.world.settings.rounds {
            for scenario in &scenarios {
                let mut order = bench.world.settings.contenders.clone();
                if round % 2 == 1 {
                    order.reverse();
                }
                for contender in order {
                    match &contender {
                        Contender::Loop { watched } => {
                            bench.run_loop(scenario, round, *watched).await
                        }
                        Contender::Binary { name, path } => {
                            bench.run_controller(scenario, round, name, path).await
                        }
                    }
                    eprintln!("    ({} done)", contender.name());
                }
            }
        }
        println!("{}", bench.report());
    });
}
