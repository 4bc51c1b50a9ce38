//! The pure part of the claim maps: which shard objects a namespace's claims make, how they
//! differ from what is published, and the ConfigMap of one shard.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::LazyLock;

use serde::{Serialize, Serializer};
use serde_json::{Value, json};

use crate::keys::Keys;

/// Every shard object's name starts with this, then `.<namespace>.<index>`.
pub const NAME_PREFIX: &str = "userns-claims";
/// The most shards one namespace is split into; the policies read names `.0` to `.15`.
pub const MAX_SHARDS: usize = 16;
/// A namespace is split into more shards once one would exceed this (estimated JSON bytes of
/// its `data`): a quarter of the API server's 1 MiB object limit, so the policies never marshal
/// a large shard and no object nears the limit.
pub const SHARD_BUDGET_BYTES: usize = 256 * 1024;
/// Past [`MAX_SHARDS`] shards, claims are dropped from a shard (fail closed: absent is not
/// `true`) rather than let it grow past this.
pub const SHARD_HARD_LIMIT_BYTES: usize = 768 * 1024;

/// The value a claim has in the map: its `<prefix>/idmap-supported` label, with anything but
/// `true` and `false` (no label, `unknown`, a hand-written value) published as `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Support {
    True,
    False,
    Unknown,
}

impl Support {
    pub fn as_str(self) -> &'static str {
        match self {
            Support::True => "true",
            Support::False => "false",
            Support::Unknown => "unknown",
        }
    }

    /// A label value as published (see the type's docs).
    pub fn from_label(value: Option<&str>) -> Support {
        match value {
            Some("true") => Support::True,
            Some("false") => Support::False,
            _ => Support::Unknown,
        }
    }
}

impl AsRef<str> for Support {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Serialize for Support {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One claim as the maps need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimEntry {
    pub namespace: String,
    pub name: String,
    pub support: Support,
}

impl ClaimEntry {
    /// From a claim's namespace, name and labels (reads `keys.supported`).
    pub fn from_labels(
        namespace: &str,
        name: &str,
        labels: Option<&BTreeMap<String, String>>,
        keys: &Keys,
    ) -> ClaimEntry {
        ClaimEntry {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            support: Support::from_label(
                labels
                    .and_then(|l| l.get(&keys.supported))
                    .map(String::as_str),
            ),
        }
    }
}

/// `userns-claims.<namespace>.<index>`.
pub fn shard_name(namespace: &str, index: usize) -> String {
    format!("{NAME_PREFIX}.{namespace}.{index}")
}

/// The shard of `claim` among `shards` (a power of two): FNV-1a (64 bit) of the name, so the
/// layout is the same on every replica and across restarts, and doubling the shard count
/// splits each shard in two.
pub fn shard_of(claim: &str, shards: usize) -> usize {
    debug_assert!(shards.is_power_of_two());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in claim.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// The JSON bytes one entry adds to a ConfigMap's `data`: `"name":"value",`.
fn entry_bytes(name: &str, support: Support) -> usize {
    name.len() + support.as_str().len() + 6
}

/// One shard object's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub name: String,
    pub namespace: String,
    pub index: usize,
    pub count: usize,
    pub data: BTreeMap<String, Support>,
}

/// The shards of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceShards {
    pub namespace: String,
    /// Empty when the namespace has no claims.
    pub shards: Vec<Shard>,
    /// Claims left out because even [`MAX_SHARDS`] shards would pass
    /// [`SHARD_HARD_LIMIT_BYTES`]: pods on them are treated as on an unlabelled claim. Worth a
    /// warning; in practice it takes about 300,000 claims of ordinary names in one namespace.
    pub overflow: usize,
}

/// The shards `claims` (all claims of `namespace`, by name) make. The names move into the
/// shards: a namespace of 10,000 claims is not copied on its way to the API server.
pub fn desired_shards(namespace: &str, claims: BTreeMap<String, Support>) -> NamespaceShards {
    if claims.is_empty() {
        return NamespaceShards {
            namespace: namespace.to_owned(),
            shards: Vec::new(),
            overflow: 0,
        };
    }
    let sizes = |count: usize| {
        let mut sizes = vec![0usize; count];
        for (name, support) in &claims {
            sizes[shard_of(name, count)] += entry_bytes(name, *support);
        }
        sizes
    };
    let mut count = 1;
    while count < MAX_SHARDS && sizes(count).into_iter().any(|s| s > SHARD_BUDGET_BYTES) {
        count *= 2;
    }
    let mut shards: Vec<Shard> = (0..count)
        .map(|index| Shard {
            name: shard_name(namespace, index),
            namespace: namespace.to_owned(),
            index,
            count,
            data: BTreeMap::new(),
        })
        .collect();
    let mut used = vec![0usize; count];
    let mut overflow = 0;
    // In name order, so which claims overflow does not depend on anything but the claims.
    for (name, support) in claims {
        let index = shard_of(&name, count);
        let bytes = entry_bytes(&name, support);
        if used[index] + bytes > SHARD_HARD_LIMIT_BYTES {
            overflow += 1;
            continue;
        }
        used[index] += bytes;
        shards[index].data.insert(name, support);
    }
    NamespaceShards {
        namespace: namespace.to_owned(),
        shards,
        overflow,
    }
}

/// A shard object as it exists in the cluster (as listed, or as last written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedShard {
    pub name: String,
    /// The claims' namespace it speaks for (its annotation), not where it lives.
    pub namespace: String,
    /// What its `data` holds, as a digest: all that is compared (a copy of every claim of the
    /// cluster would be the writer's largest state).
    pub content: Content,
}

/// A digest of a shard's `data` (every name and value as written, in name order): equal for
/// equal data, and with 64 bits keyed per process, unequal for any other data but by a chance
/// no one can steer (the key is random and never leaves the process). A value outside
/// `true`/`false`/`unknown` digests as written, so a hand-edited map compares unequal and is
/// rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content(u64);

/// The digest's key: one per process, as the digests are compared only within it.
static CONTENT_KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);

impl Content {
    /// The content of a `data`: as listed (`String` values) or as a shard writes it.
    pub fn of<V: AsRef<str>>(data: &BTreeMap<String, V>) -> Content {
        let mut hasher = CONTENT_KEY.build_hasher();
        // The count and each string's own terminator keep different data from running together.
        data.len().hash(&mut hasher);
        for (name, value) in data {
            name.hash(&mut hasher);
            value.as_ref().hash(&mut hasher);
        }
        Content(hasher.finish())
    }
}

impl PublishedShard {
    /// `shard` as it is once written.
    pub fn written(shard: &Shard) -> PublishedShard {
        PublishedShard {
            name: shard.name.clone(),
            namespace: shard.namespace.clone(),
            content: Content::of(&shard.data),
        }
    }
}

/// What to do to make one namespace's published shards what its claims make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardChange {
    /// Create or replace the shard with [`shard_object`].
    Write(Shard),
    /// Delete a shard the namespace no longer has (fewer shards, or no claims).
    Delete(String),
}

/// The changes, in the order they must be made: every `Write` before any `Delete`, so that a
/// claim moving to another shard is never missing from all of them (the policies treat a claim
/// found twice as `true` only when every copy says so).
pub fn diff_namespace(
    desired: &NamespaceShards,
    published: &BTreeMap<String, PublishedShard>,
) -> Vec<ShardChange> {
    let mut changes = Vec::new();
    for shard in &desired.shards {
        let same = published.get(&shard.name).is_some_and(|p| {
            p.namespace == shard.namespace && p.content == Content::of(&shard.data)
        });
        if !same {
            changes.push(ShardChange::Write(shard.clone()));
        }
    }
    for (name, shard) in published {
        if shard.namespace == desired.namespace && !desired.shards.iter().any(|s| &s.name == name) {
            changes.push(ShardChange::Delete(name.clone()));
        }
    }
    changes
}

/// The label every shard object carries (the selector of the writer's list and of Kyverno's
/// cache), with the value [`MAP_FORMAT`].
pub fn map_label(keys: &Keys) -> String {
    format!("{}/claim-map", keys.prefix())
}

/// The annotation naming the namespace a shard speaks for.
pub fn namespace_annotation(keys: &Keys) -> String {
    format!("{}/claim-map-namespace", keys.prefix())
}

/// The annotation `<index>/<count>` of a shard.
pub fn shard_annotation(keys: &Keys) -> String {
    format!("{}/claim-map-shard", keys.prefix())
}

/// The value of [`map_label`]: the format of `data`, bumped if it ever changes.
pub const MAP_FORMAT: &str = "v1";

/// The whole ConfigMap of one shard, in `labeler_namespace`: what is written (created or
/// replaced). It serializes straight from the shard ([`ShardObject`]); as a `Value` for tests
/// and tools.
pub fn shard_object(labeler_namespace: &str, shard: &Shard, keys: &Keys) -> Value {
    serde_json::to_value(ShardObject::new(labeler_namespace, shard, keys))
        .expect("a shard serializes: string keys and values only")
}

/// A shard's ConfigMap borrowing the shard's claims, to serialize without a copy of them.
#[derive(Debug, Serialize)]
pub struct ShardObject<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: Value,
    data: &'a BTreeMap<String, Support>,
}

impl<'a> ShardObject<'a> {
    pub fn new(labeler_namespace: &str, shard: &'a Shard, keys: &Keys) -> ShardObject<'a> {
        ShardObject {
            api_version: "v1",
            kind: "ConfigMap",
            metadata: json!({
                "name": shard.name,
                "namespace": labeler_namespace,
                "labels": {
                    map_label(keys): MAP_FORMAT,
                    "app.kubernetes.io/managed-by": "userns-labeler",
                },
                "annotations": {
                    namespace_annotation(keys): shard.namespace,
                    shard_annotation(keys): format!("{}/{}", shard.index, shard.count),
                },
            }),
            data: &shard.data,
        }
    }
}

/// A listed ConfigMap as a [`PublishedShard`], if it is one (the label, the annotation and a
/// name of the form [`shard_name`]); anything else is left alone.
pub fn published_from(
    name: &str,
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
    data: Option<&BTreeMap<String, String>>,
    keys: &Keys,
) -> Option<PublishedShard> {
    labels?.get(&map_label(keys))?;
    let namespace = annotations?.get(&namespace_annotation(keys))?;
    let rest = name.strip_prefix(&format!("{NAME_PREFIX}.{namespace}."))?;
    rest.parse::<usize>().ok()?;
    Some(PublishedShard {
        name: name.to_owned(),
        namespace: namespace.clone(),
        content: Content::of(data.unwrap_or(&BTreeMap::new())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(entries: &[(&str, Support)]) -> BTreeMap<String, Support> {
        entries.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect()
    }

    fn published(shards: &NamespaceShards) -> BTreeMap<String, PublishedShard> {
        shards
            .shards
            .iter()
            .map(|s| (s.name.clone(), listed(s, |_| {})))
            .collect()
    }

    /// `shard` as the writer reads it back from a list, its `data` first passed to `edit`.
    fn listed(shard: &Shard, edit: impl FnOnce(&mut BTreeMap<String, String>)) -> PublishedShard {
        let keys = Keys::default();
        let object = shard_object("userns-labeler", shard, &keys);
        let listed: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(object).unwrap();
        let mut data = listed.data.unwrap_or_default();
        edit(&mut data);
        let meta = &listed.metadata;
        published_from(
            meta.name.as_deref().unwrap(),
            meta.labels.as_ref(),
            meta.annotations.as_ref(),
            Some(&data),
            &keys,
        )
        .expect("a shard reads back as one")
    }

    /// `n` claim names as a StatefulSet makes them, long enough to need several shards.
    fn many(n: usize, support: Support) -> BTreeMap<String, Support> {
        (0..n)
            .map(|i| (format!("data-postgres-cluster-main-{i}"), support))
            .collect()
    }

    #[test]
    fn label_values_other_than_true_and_false_publish_as_unknown() {
        assert_eq!(Support::from_label(Some("true")), Support::True);
        assert_eq!(Support::from_label(Some("false")), Support::False);
        for other in [None, Some("unknown"), Some("True"), Some("yes"), Some("")] {
            assert_eq!(Support::from_label(other), Support::Unknown, "{other:?}");
        }
    }

    #[test]
    fn claim_entry_reads_the_supported_label_under_the_configured_prefix() {
        let keys = Keys::new("security.example.com").unwrap();
        let labels: BTreeMap<String, String> = [
            ("security.example.com/idmap-supported", "true"),
            ("userns.io/idmap-supported", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let entry = ClaimEntry::from_labels("apps", "data", Some(&labels), &keys);
        assert_eq!(entry.support, Support::True);
        assert_eq!(
            ClaimEntry::from_labels("apps", "data", None, &keys).support,
            Support::Unknown
        );
    }

    #[test]
    fn a_namespace_without_claims_has_no_shards() {
        let shards = desired_shards("apps", BTreeMap::new());
        assert!(shards.shards.is_empty());
        assert_eq!(shards.overflow, 0);
    }

    #[test]
    fn a_small_namespace_is_one_shard_named_after_it_holding_every_claim() {
        let c = claims(&[
            ("a", Support::True),
            ("b", Support::False),
            ("c", Support::Unknown),
        ]);
        let shards = desired_shards("apps", c.clone());
        assert_eq!(shards.shards.len(), 1);
        let shard = &shards.shards[0];
        assert_eq!(shard.name, "userns-claims.apps.0");
        assert_eq!((shard.index, shard.count), (0, 1));
        assert_eq!(shard.data, c);
    }

    #[test]
    fn shard_names_are_valid_configmap_names_for_the_longest_namespace() {
        let namespace = "n".repeat(63);
        let name = shard_name(&namespace, MAX_SHARDS - 1);
        assert!(name.len() <= 253, "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        );
    }

    #[test]
    fn shard_assignment_is_stable_and_doubling_splits_each_shard() {
        // Fixed values: the layout must not change between releases without a format bump.
        assert_eq!(shard_of("data", 1), 0);
        let a = shard_of("data-postgres-0", 16);
        assert_eq!(a, shard_of("data-postgres-0", 16));
        for name in ["x", "data-0", "data-1", "uploads", "db-cache"] {
            for n in [1, 2, 4, 8] {
                assert_eq!(
                    shard_of(name, 2 * n) % n,
                    shard_of(name, n),
                    "{name} at {n} → {}",
                    2 * n
                );
            }
        }
    }

    #[test]
    fn a_large_namespace_is_split_until_every_shard_fits_the_budget() {
        let c = many(20_000, Support::True);
        let shards = desired_shards("big", c.clone());
        assert!(shards.shards.len() > 1 && shards.shards.len().is_power_of_two());
        assert_eq!(shards.overflow, 0);
        let total: usize = shards.shards.iter().map(|s| s.data.len()).sum();
        assert_eq!(total, 20_000, "every claim in exactly one shard");
        for s in &shards.shards {
            let bytes: usize = s.data.iter().map(|(k, v)| entry_bytes(k, *v)).sum();
            assert!(bytes <= SHARD_BUDGET_BYTES, "{}: {bytes}", s.name);
            assert!(s.data.keys().all(|k| shard_of(k, s.count) == s.index));
            // The written object, serialised, is far from the 1 MiB limit.
            let body = shard_object("userns-labeler", s, &Keys::default());
            let len = serde_json::to_vec(&body).unwrap().len();
            assert!(len < 300 * 1024, "{}: {len} bytes", s.name);
        }
        // The smallest count that fits: half as many shards would not.
        let half = shards.shards.len() / 2;
        let mut sizes = vec![0usize; half];
        for (k, v) in &c {
            sizes[shard_of(k, half)] += entry_bytes(k, *v);
        }
        assert!(sizes.iter().any(|s| *s > SHARD_BUDGET_BYTES));
    }

    #[test]
    fn past_the_most_shards_claims_are_left_out_and_counted_never_overfilled() {
        // 253-character names: about 3,000 fit in one shard at the hard limit.
        let c: BTreeMap<String, Support> = (0..60_000)
            .map(|i| (format!("{i:0>253}"), Support::True))
            .collect();
        let shards = desired_shards("huge", c);
        assert_eq!(shards.shards.len(), MAX_SHARDS);
        assert!(shards.overflow > 0);
        let kept: usize = shards.shards.iter().map(|s| s.data.len()).sum();
        assert_eq!(kept + shards.overflow, 60_000);
        for s in &shards.shards {
            let bytes: usize = s.data.iter().map(|(k, v)| entry_bytes(k, *v)).sum();
            assert!(bytes <= SHARD_HARD_LIMIT_BYTES);
        }
    }

    #[test]
    fn nothing_changes_when_the_published_content_is_the_same() {
        let shards = desired_shards("apps", many(30_000, Support::True));
        assert!(diff_namespace(&shards, &published(&shards)).is_empty());
    }

    #[test]
    fn one_flipped_claim_rewrites_only_its_shard() {
        let before = many(30_000, Support::True);
        let old = desired_shards("apps", before.clone());
        let mut after = before.clone();
        after.insert("data-postgres-cluster-main-77".into(), Support::False);
        let new = desired_shards("apps", after);
        let changes = diff_namespace(&new, &published(&old));
        assert_eq!(changes.len(), 1, "{:?}", changes.len());
        let ShardChange::Write(shard) = &changes[0] else {
            panic!("a write")
        };
        assert_eq!(
            shard.data["data-postgres-cluster-main-77"],
            Support::False,
            "the flipped claim's shard"
        );
    }

    #[test]
    fn a_claim_missing_from_a_published_shard_or_an_extra_one_rewrites_it() {
        let c = claims(&[("a", Support::True), ("b", Support::True)]);
        let desired = desired_shards("apps", c);
        let shard = &desired.shards[0];
        let edited = |edit: fn(&mut BTreeMap<String, String>)| {
            BTreeMap::from([(shard.name.clone(), listed(shard, edit))])
        };
        assert!(diff_namespace(&desired, &edited(|_| {})).is_empty());
        let missing = edited(|data| {
            data.remove("b");
        });
        assert_eq!(diff_namespace(&desired, &missing).len(), 1);
        let extra = edited(|data| {
            data.insert("gone".into(), "true".into());
        });
        assert_eq!(diff_namespace(&desired, &extra).len(), 1);
        let hand_written = edited(|data| {
            data.insert("a".into(), "TRUE".into());
        });
        assert_eq!(diff_namespace(&desired, &hand_written).len(), 1);
        // Names and values cannot trade bytes: "ab"="true" is not "a"="btrue".
        let one = desired_shards("apps", claims(&[("ab", Support::True)]));
        let other = |data: &mut BTreeMap<String, String>| {
            data.clear();
            data.insert("a".into(), "btrue".into());
        };
        let shard = &one.shards[0];
        let p = BTreeMap::from([(shard.name.clone(), listed(shard, other))]);
        assert_eq!(diff_namespace(&one, &p).len(), 1);
    }

    #[test]
    fn fewer_shards_write_the_new_layout_before_deleting_the_stale_shards() {
        let old = desired_shards("apps", many(30_000, Support::True));
        assert!(old.shards.len() >= 2);
        let new = desired_shards("apps", many(10, Support::True));
        assert_eq!(new.shards.len(), 1);
        let changes = diff_namespace(&new, &published(&old));
        let first_delete = changes
            .iter()
            .position(|c| matches!(c, ShardChange::Delete(_)))
            .expect("stale shards are deleted");
        assert!(
            changes[..first_delete]
                .iter()
                .all(|c| matches!(c, ShardChange::Write(_)))
        );
        assert!(
            changes[first_delete..]
                .iter()
                .all(|c| matches!(c, ShardChange::Delete(_)))
        );
        assert_eq!(changes.len() - first_delete, old.shards.len() - 1);
    }

    #[test]
    fn a_namespace_whose_claims_are_all_gone_deletes_its_shards_only() {
        let apps = desired_shards("apps", claims(&[("a", Support::True)]));
        let other = desired_shards("other", claims(&[("a", Support::False)]));
        let mut p = published(&apps);
        p.extend(published(&other));
        let changes = diff_namespace(&desired_shards("apps", BTreeMap::new()), &p);
        assert_eq!(
            changes,
            vec![ShardChange::Delete("userns-claims.apps.0".into())]
        );
    }

    #[test]
    fn the_shard_object_is_a_labelled_configmap_in_the_labelers_namespace() {
        let keys = Keys::default();
        let shards = desired_shards(
            "apps",
            claims(&[("db", Support::True), ("nfs", Support::False)]),
        );
        let body = shard_object("userns-labeler", &shards.shards[0], &keys);
        assert_eq!(
            body,
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "userns-claims.apps.0",
                    "namespace": "userns-labeler",
                    "labels": {
                        "userns.io/claim-map": "v1",
                        "app.kubernetes.io/managed-by": "userns-labeler",
                    },
                    "annotations": {
                        "userns.io/claim-map-namespace": "apps",
                        "userns.io/claim-map-shard": "0/1",
                    },
                },
                "data": {"db": "true", "nfs": "false"},
            })
        );
    }

    #[test]
    fn only_configmaps_that_are_shards_are_read_back() {
        let keys = Keys::default();
        let label: BTreeMap<String, String> = [("userns.io/claim-map".into(), "v1".into())].into();
        let ann: BTreeMap<String, String> =
            [("userns.io/claim-map-namespace".into(), "apps".into())].into();
        assert!(
            published_from(
                "userns-claims.apps.3",
                Some(&label),
                Some(&ann),
                None,
                &keys
            )
            .is_some()
        );
        // The driver ConfigMap and friends: no label.
        assert!(published_from("userns-claims.apps.0", None, Some(&ann), None, &keys).is_none());
        // A name that does not match its annotation is not ours to manage.
        assert!(
            published_from(
                "userns-claims.other.0",
                Some(&label),
                Some(&ann),
                None,
                &keys
            )
            .is_none()
        );
        assert!(
            published_from(
                "userns-claims.apps.x",
                Some(&label),
                Some(&ann),
                None,
                &keys
            )
            .is_none()
        );
    }
}
