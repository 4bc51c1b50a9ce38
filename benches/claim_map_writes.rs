//! What one claim-map write costs the API server, by the way it is written, on the local control
//! plane: server-side apply of the whole map (how the maps were written until session 8) beside
//! a plain replace (PUT of the whole object, how `PolicyMaps` writes them now), at a few map
//! sizes. Every write changes every key (the worst case, a labelling storm), the two ways
//! interleaved write by write so a load change touches both alike.
//!
//! For each size and way: the API server's and etcd's CPU per write, the wall time per write,
//! and the `managedFields` the object ends up carrying.
//!
//! Run: `cargo bench --bench claim_map_writes` (needs `make control-plane`). Environment:
//! - `USERNS_BENCH_MAP_SIZES` (default `1000,5000`): claims per map; 5,000 ordinary names make
//!   a map near the shard budget (`SHARD_BUDGET_BYTES`), the largest the labeler writes;
//! - `USERNS_BENCH_WRITES` (default 20): writes per size and way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::Value;
use userns_labeler::keys::Keys;
use userns_labeler::policy_maps::{Support, desired_shards, shard_object};
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::measure;

const FIELD_MANAGER: &str = "userns-labeler";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Way {
    ServerSideApply,
    Replace,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::ServerSideApply => "server-side apply",
            Way::Replace => "replace (PUT)",
        }
    }
}

#[derive(Default)]
struct Cost {
    server_cpu: f64,
    wall: Duration,
    writes: u32,
    managed_fields_bytes: usize,
}

/// The map of `size` claims as the labeler writes it, every value `true` on even `turn`s and
/// `false` on odd ones, under the object name `name`.
fn map(namespace: &str, size: usize, turn: usize, name: &str) -> Value {
    let support = if turn.is_multiple_of(2) {
        Support::True
    } else {
        Support::False
    };
    let claims: BTreeMap<String, Support> = (0..size)
        .map(|i| (format!("data-postgres-{i}"), support))
        .collect();
    let layout = desired_shards(namespace, claims);
    assert_eq!(
        layout.shards.len(),
        1,
        "{size} claims are more than one shard: choose a smaller size"
    );
    let mut object = shard_object(namespace, &layout.shards[0], &Keys::default());
    object["metadata"]["name"] = Value::from(name);
    object
}

async fn write(api: &Api<ConfigMap>, way: Way, name: &str, object: &Value) {
    match way {
        Way::ServerSideApply => {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(name, &params, &Patch::Apply(object))
                .await
                .expect("server-side apply");
        }
        Way::Replace => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            let map: ConfigMap = serde_json::from_value(object.clone()).unwrap();
            api.replace(name, &params, &map).await.expect("replace");
        }
    }
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: build-check only.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "claim_map_writes: a benchmark; run it with `cargo bench --bench claim_map_writes`"
        );
        return;
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let sizes: Vec<usize> = var("USERNS_BENCH_MAP_SIZES")
        .unwrap_or_else(|| "1000,5000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("USERNS_BENCH_MAP_SIZES"))
        .collect();
    let writes: usize = var("USERNS_BENCH_WRITES").map_or(20, |v| v.parse().expect("writes"));
    control_plane::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cp = control_plane::shared();
        let ns = cp.namespace("maps").await;
        let api: Api<ConfigMap> = Api::namespaced(cp.client().await, ns.name());
        eprintln!("{}", measure::load());
        let mut costs: BTreeMap<(usize, Way), Cost> = BTreeMap::new();
        for &size in &sizes {
            let ways = [Way::ServerSideApply, Way::Replace];
            let name = |way: Way| format!("map-{size}-{}", way as u8);
            for way in ways {
                let object = map(ns.name(), size, 0, &name(way));
                let created: ConfigMap = serde_json::from_value(object).unwrap();
                api.create(&PostParams::default(), &created)
                    .await
                    .expect("create");
            }
            for turn in 1..=writes {
                // Alternate which way goes first, so neither always follows the other.
                let order = if turn.is_multiple_of(2) {
                    [ways[0], ways[1]]
                } else {
                    [ways[1], ways[0]]
                };
                for way in order {
                    let object = map(ns.name(), size, turn, &name(way));
                    let (cpu, started) = (measure::control_plane_cpu(cp.dir()), Instant::now());
                    write(&api, way, &name(way), &object).await;
                    let cost = costs.entry((size, way)).or_default();
                    cost.wall += started.elapsed();
                    cost.server_cpu += measure::control_plane_cpu(cp.dir()) - cpu;
                    cost.writes += 1;
                }
            }
            for way in ways {
                let written = api.get(&name(way)).await.expect("read back");
                let fields = serde_json::to_vec(&written.metadata.managed_fields).unwrap();
                costs.entry((size, way)).or_default().managed_fields_bytes = fields.len();
                api.delete(&name(way), &Default::default())
                    .await
                    .expect("delete");
            }
        }
        println!(
            "{:>7} {:<18} {:>7} {:>22} {:>15} {:>20}",
            "claims",
            "way",
            "writes",
            "server CPU per write",
            "wall per write",
            "managedFields bytes"
        );
        for ((size, way), cost) in &costs {
            let per = |total: f64| 1000.0 * total / f64::from(cost.writes);
            println!(
                "{size:>7} {:<18} {:>7} {:>19.1} ms {:>12.1} ms {:>20}",
                way.name(),
                cost.writes,
                per(cost.server_cpu),
                per(cost.wall.as_secs_f64()),
                cost.managed_fields_bytes,
            );
        }
        eprintln!("{}", measure::load());
    });
}
