//! Churn: a table edit flips the claims of one namespace (`USERNS_CHURN_CLAIMS`, default 1,000,
//! all on the benchmark's own driver) from `true` to `false` while pods on them are created
//! (server-side dry run) at `USERNS_CHURN_RATE` per second per chain (default 20). For each
//! chain that enables pods, the window from the edit until no pod on a flipped claim is enabled
//! any more, over `USERNS_CHURN_EDITS` edits (default 5; the table is set back to `true`
//! between them), beside when the labels and the claim maps had all flipped.
//!
//! Pods pick the claims in turn, so each pod samples another claim. Per chain and edit: "first
//! skipped", the send time of the first pod skipped after the edit, and "window", the send time
//! of the last pod that was still enabled (0 when none was); p50 and maximum over the edits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use userns_labeler_test_support::measure::percentile;

use super::{CHAIN_LABEL, Env, create, published};

/// The CSI driver of the churn claims, `true` in the table until an edit says `false`.
pub const DRIVER: &str = "churn.csi.example.com";
const TABLE_NAME: &str = "userns-labeler-drivers";
const TABLE_KEY: &str = "drivers.yaml";

pub struct Settings {
    pub claims: usize,
    pub rate: f64,
    pub edits: usize,
    pub after: Duration,
}

impl Settings {
    pub fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Settings {
            claims: var("USERNS_CHURN_CLAIMS")
                .map_or(1000, |v| v.parse().expect("USERNS_CHURN_CLAIMS")),
            rate: var("USERNS_CHURN_RATE").map_or(20.0, |v| v.parse().expect("USERNS_CHURN_RATE")),
            edits: var("USERNS_CHURN_EDITS").map_or(5, |v| v.parse().expect("USERNS_CHURN_EDITS")),
            after: Duration::from_secs_f64(
                var("USERNS_CHURN_SECONDS")
                    .map_or(15.0, |v| v.parse().expect("USERNS_CHURN_SECONDS")),
            ),
        }
    }
}

/// The operator table with the churn driver's verdict.
fn table(verdict: bool) -> ConfigMap {
    let rules = format!(
        "rules:\n  - driver: {DRIVER}\n    verdict: {verdict}\n    reason: The admission benchmark's churn driver, edited between true and false.\n"
    );
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": TABLE_NAME},
        "data": {TABLE_KEY: rules},
    }))
    .unwrap()
}

/// Writes the operator table of the labeler's namespace with the churn driver `verdict`.
pub async fn set_table(admin: &Client, labeler_ns: &str, verdict: bool) {
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), labeler_ns);
    api.patch(
        TABLE_NAME,
        &PatchParams::apply("admission-bench").force(),
        &Patch::Apply(table(verdict)),
    )
    .await
    .expect("the driver table");
}

/// A pod of `chain` on the churn claim `i`.
fn pod(chain: &str, i: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "churn-", "labels": {CHAIN_LABEL: chain, "app": "churn"}},
        "spec": {
            "containers": [{"name": "app", "image": "registry.example.com/app:1.0",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": format!("churn-{i}")}}]
        }
    }))
    .unwrap()
}

/// One chain's pods of one edit: (seconds since the edit, enabled), by send time.
type Trace = Vec<(f64, bool)>;

struct Edit {
    traces: BTreeMap<&'static str, Trace>,
    labels_half: Option<f64>,
    labels_all: Option<f64>,
    maps_all: Option<f64>,
}

/// Runs the edits and prints the windows. `chains`: the chains that enable pods.
pub async fn run(env: &Env, ns: &str, chains: &[&'static str], settings: &Settings) {
    let mut edits = Vec::new();
    for edit in 0..settings.edits {
        settle(env, ns, chains, settings.claims, true).await;
        edits.push(one_edit(env, ns, chains, settings).await);
        eprintln!("churn edit {} done", edit + 1);
        set_table(&env.admin, &env.labeler_ns, true).await;
    }
    report(&edits, chains, settings);
}

/// Waits until every churn claim is `value` in its label and in the maps, and every chain
/// decides a pod accordingly.
async fn settle(env: &Env, ns: &str, chains: &[&'static str], claims: usize, value: bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let text = if value { "true" } else { "false" };
    loop {
        let (labelled, mapped) = published(env, Some(ns), text).await;
        let mut decided = labelled == claims && mapped == claims;
        if decided {
            for chain in chains {
                let answer = create(&env.admin, ns, &pod(chain, claims - 1)).await;
                decided &= (answer["spec"]["hostUsers"] == json!(false)) == value;
            }
        }
        if decided {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "churn claims not settled to {text} within 300 s: {labelled} labelled, {mapped} in the maps"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn one_edit(env: &Env, ns: &str, chains: &[&'static str], settings: &Settings) -> Edit {
    let traces: Arc<Mutex<BTreeMap<&'static str, Trace>>> = Arc::default();
    let edit_at: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let interval = Duration::from_secs_f64(1.0 / settings.rate);
    let mut senders = Vec::new();
    for (c, &chain) in chains.iter().enumerate() {
        let (admin, ns) = (env.admin.clone(), ns.to_string());
        let (traces, edit_at, stop) = (traces.clone(), edit_at.clone(), stop.clone());
        let (claims, spread) = (settings.claims, chains.len());
        senders.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut inflight = Vec::new();
            // Chains start on different claims.
            let mut i = c * claims / spread;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let (admin, ns, traces, edit_at) =
                    (admin.clone(), ns.clone(), traces.clone(), edit_at.clone());
                let body = pod(chain, i % claims);
                i += 1;
                inflight.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let answer: Value = create(&admin, &ns, &body).await;
                    let enabled = answer["spec"]["hostUsers"] == json!(false);
                    if let Some(at) = edit_at.get().copied().filter(|at| sent >= *at) {
                        let t = sent.duration_since(at).as_secs_f64();
                        traces
                            .lock()
                            .await
                            .entry(chain)
                            .or_default()
                            .push((t, enabled));
                    }
                }));
            }
            for task in inflight {
                task.await.unwrap();
            }
        }));
    }
    // Pods before the edit: every chain under load already.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at = Instant::now();
    edit_at.set(at).unwrap();
    set_table(&env.admin, &env.labeler_ns, false).await;
    let (mut labels_half, mut labels_all, mut maps_all) = (None, None, None);
    while at.elapsed() < settings.after {
        let (labelled, mapped) = published(env, Some(ns), "false").await;
        let t = at.elapsed().as_secs_f64();
        if labels_half.is_none() && labelled * 2 >= settings.claims {
            labels_half = Some(t);
        }
        if labels_all.is_none() && labelled == settings.claims {
            labels_all = Some(t);
        }
        if maps_all.is_none() && mapped == settings.claims {
            maps_all = Some(t);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    let mut traces = std::mem::take(&mut *traces.lock().await);
    for trace in traces.values_mut() {
        trace.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Edit {
        traces,
        labels_half,
        labels_all,
        maps_all,
    }
}

/// (first skipped, window) of one trace, in seconds after the edit.
fn windows(trace: &Trace) -> (Option<f64>, f64) {
    let first_skip = trace.iter().find(|(_, e)| !e).map(|(t, _)| *t);
    let window = trace
        .iter()
        .filter(|(_, e)| *e)
        .map(|(t, _)| *t)
        .fold(0.0, f64::max);
    (first_skip, window)
}

fn secs(t: Option<f64>) -> String {
    t.map_or_else(|| "never".into(), |t| format!("{t:.2}"))
}

fn report(edits: &[Edit], chains: &[&'static str], settings: &Settings) {
    println!(
        "\nchurn: a table edit flips {} claims true -> false while pods on them are created at {}/s per chain; {} edit(s), {:.0} s observed after each (seconds after the edit)",
        settings.claims,
        settings.rate,
        edits.len(),
        settings.after.as_secs_f64()
    );
    for (k, edit) in edits.iter().enumerate() {
        println!(
            "  edit {}: labels half {} all {}; claim maps all {}",
            k + 1,
            secs(edit.labels_half),
            secs(edit.labels_all),
            secs(edit.maps_all)
        );
        for chain in chains {
            let trace = edit.traces.get(chain).cloned().unwrap_or_default();
            let (first, window) = windows(&trace);
            let enabled = trace.iter().filter(|(_, e)| *e).count();
            println!(
                "    {chain:<15} pods {:>4} enabled {:>4}  first skipped {:>6}  window {:>6.2}",
                trace.len(),
                enabled,
                secs(first),
                window
            );
        }
    }
    println!(
        "  {:<15} {:>12} {:>12} {:>12} {:>12}",
        "chain", "window p50", "window max", "1st skip p50", "1st skip max"
    );
    for chain in chains {
        let mut window: Vec<Duration> = Vec::new();
        let mut first: Vec<Duration> = Vec::new();
        for edit in edits {
            let trace = edit.traces.get(chain).cloned().unwrap_or_default();
            let (f, w) = windows(&trace);
            window.push(Duration::from_secs_f64(w));
            first.push(Duration::from_secs_f64(
                f.unwrap_or(settings.after.as_secs_f64()),
            ));
        }
        window.sort();
        first.sort();
        println!(
            "  {chain:<15} {:>10} s {:>10} s {:>10} s {:>10} s",
            ms_to_s(percentile(&window, 50.0)),
            ms_to_s(*window.last().unwrap_or(&Duration::ZERO)),
            ms_to_s(percentile(&first, 50.0)),
            ms_to_s(*first.last().unwrap_or(&Duration::ZERO)),
        );
    }
}

fn ms_to_s(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}
