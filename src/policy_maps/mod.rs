//! Claim maps for policy engines: per namespace, ConfigMaps in the labeler's own namespace that
//! hold a complete map *claim name → value of `<prefix>/idmap-supported`*, so that a Kyverno
//! policy (or any engine) can look up the claims of one pod without holding or scanning every
//! claim of the cluster.
//!
//! # Why
//!
//! A Kyverno `GlobalContextEntry` over all claims is read per admission as the whole list:
//! `k8sresource` entries answer `Get("")` by listing the informer's every object, the
//! `globalReference` loader then runs its JMESPath over that list and JSON-marshals the result
//! into the admission's context (kyverno v1.19.1 `pkg/globalcontext/k8sresource/entry.go`,
//! `pkg/engine/context/loaders/globalcontext.go`). The cost of one pod admission therefore grew
//! with the claims of the cluster. With these maps the policies read a pre-computed projection
//! *by object name* (`userns-claims.<namespace>.<shard>`) and only the pod's own claims in it.
//!
//! # What is published
//!
//! For every namespace with at least one claim, `1 << k` ConfigMaps (at most [`MAX_SHARDS`])
//! named `userns-claims.<namespace>.<i>`, labelled `<prefix>/claim-map: "v1"`, whose `data`
//! maps each claim name to `true`, `false` or `unknown` (a claim not labelled, or labelled
//! anything else, is `unknown`). A claim lives in shard `fnv1a64(name) % n`; `n` is the
//! smallest power of two that keeps every shard under [`SHARD_BUDGET_BYTES`]. The policies read
//! *every* shard of the pod's namespace (they need no hash function), so a shard layout change
//! is invisible to them. Fail closed, always:
//!
//! - a claim absent from every shard is *not* `true` (not created yet, not seen yet, or dropped
//!   because a namespace outgrew [`MAX_SHARDS`] shards: see [`NamespaceShards::overflow`]);
//! - a namespace without claims has no objects;
//! - while shards are re-laid, new shards are written before stale ones are deleted, and the
//!   policies require every copy of a claim they find to say `true`.
//!
//! The labels on the claims stay the operator-facing truth: the maps are derived from the labels
//! the claims carry (as the claim watch sees them), never from the engine directly.
//!
//! # Interface (the hook the controller calls)
//!
//! ```text
//! let maps = PolicyMaps::new(PolicyMapSettings::new(labeler_namespace, &keys));   // every replica
//! // in cache.rs, on the claim watcher's event stream, before the reflector:
//! //     .inspect(|event| maps.observe(&event.map(claim_entry)))   -- see `observe`
//! tokio::spawn(maps.clone().run(client, leadership.is_leader.clone(), shutdown.clone()));
//! ```
//!
//! - [`PolicyMaps::observe`] takes the claim watcher's events (`Init`, `InitApply`, `InitDone`,
//!   `Apply`, `Delete`), each claim reduced to a [`ClaimEntry`] ([`ClaimEntry::from_labels`]
//!   reads the label). It only updates an in-memory index (about 60 bytes per claim) and marks
//!   the namespace dirty; cheap enough to call inline on every event.
//! - [`PolicyMaps::run`] is the writer: it writes only while `is_leader` is `true`, only after
//!   the first `InitDone`, only namespaces whose content changed, coalescing changes for
//!   [`PolicyMapSettings::coalesce`] and at most [`PolicyMapSettings::max_writes_per_second`].
//!   On gaining leadership it lists the existing maps once (label selector) and reconciles
//!   every namespace against them.
//!
//! RBAC: the labeler needs `get, list, watch, create, update, delete` on ConfigMaps in its own
//! namespace (the chart's Role); Kyverno's admission controller needs `get, list, watch` on
//! them (the chart's `kyverno` values).

mod shards;
mod writer;

pub use shards::{
    ClaimEntry, Content, MAP_FORMAT, MAX_SHARDS, NAME_PREFIX, NamespaceShards, PublishedShard,
    SHARD_BUDGET_BYTES, SHARD_HARD_LIMIT_BYTES, Shard, ShardChange, Support, desired_shards,
    diff_namespace, map_label, namespace_annotation, published_from, shard_annotation, shard_name,
    shard_object, shard_of,
};
pub use writer::{PolicyMapError, PolicyMapSettings, PolicyMaps};

/// A claim watch event as the maps read it: each claim reduced to its namespace, name and the
/// value of `keys.supported` (what [`crate::cache::start_with`] hands over).
pub fn claim_event(
    event: &kube::runtime::watcher::Event<crate::capability::PrunedClaim>,
    keys: &crate::keys::Keys,
) -> kube::runtime::watcher::Event<ClaimEntry> {
    use kube::runtime::watcher::Event;
    let entry = |claim: &crate::capability::PrunedClaim| ClaimEntry {
        namespace: claim.metadata.namespace.clone().unwrap_or_default(),
        name: claim.metadata.name.clone().unwrap_or_default(),
        support: Support::from_label(claim.marks.label(&keys.supported)),
    };
    match event {
        Event::Apply(claim) => Event::Apply(entry(claim)),
        Event::Delete(claim) => Event::Delete(entry(claim)),
        Event::Init => Event::Init,
        Event::InitApply(claim) => Event::InitApply(entry(claim)),
        Event::InitDone => Event::InitDone,
    }
}
