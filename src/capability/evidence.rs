//! Evidence from the nodes: what a container runtime reported when an idmapped mount failed.
//! The driver table is a prediction; a node refusing to idmap-mount a volume is a fact, and it
//! wins over the table (the operator's override annotation still wins over both).
//!
//! Evidence is kept where the engine reads it: as the annotation `<prefix>/idmap-evidence` on a
//! claim, its PersistentVolume or a Node, and, for inline hostPath volumes (no object to
//! annotate), as [`HostPathEvidence`] records in a labeler-owned ConfigMap. Its value is one JSON
//! object ([`Evidence`]); any other non-empty value still counts as evidence (an operator may
//! write one by hand), shown as written.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::pruned::Marks;
use super::resolve::VolumeVerdict;
use super::table::Verdict;
use crate::keys::Keys;

/// The longest runtime error kept in evidence (its first line, cut on a character boundary).
pub const MAX_ERROR_BYTES: usize = 512;

/// One failed idmapped mount, as the node's runtime reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// `namespace/name` of the pod that failed.
    pub pod: String,
    /// The node it failed on.
    pub node: String,
    /// When the runtime reported it (RFC 3339).
    pub time: String,
    /// `runc`, `crun` or `containerd`.
    pub runtime: String,
    /// The first line of the error, at most [`MAX_ERROR_BYTES`].
    pub error: String,
    /// The host path, for an inline hostPath volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Evidence {
    /// The annotation value (or ConfigMap entry): compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses an annotation value or ConfigMap entry written by [`Evidence::to_json`].
    pub fn parse(text: &str) -> Option<Evidence> {
        serde_json::from_str(text).ok()
    }

    /// What happened, as a clause: `on node N at T, pod ns/p failed with runc's error "…"`.
    pub fn describe(&self) -> String {
        format!(
            "on node {} at {}, pod {} failed with {}'s error \"{}\"",
            self.node, self.time, self.pod, self.runtime, self.error
        )
    }
}

/// The first line of `message`, at most `max` bytes (cut on a character boundary).
pub fn first_line(message: &str, max: usize) -> String {
    let line = message.lines().next().unwrap_or_default().trim();
    let mut end = line.len().min(max);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

/// The evidence annotation of an object, if it carries a non-empty one.
pub fn evidence_annotation<'a>(meta: &'a ObjectMeta, keys: &Keys) -> Option<&'a str> {
    meta.annotations
        .as_ref()?
        .get(&keys.idmap_evidence)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
}

/// A sentence on evidence held in an annotation value: parsed when it is ours, as written
/// (bounded) when it is not.
pub fn describe_annotation(value: &str) -> String {
    match Evidence::parse(value) {
        Some(evidence) => evidence.describe(),
        None => format!("recorded as \"{}\"", first_line(value, MAX_ERROR_BYTES)),
    }
}

/// Evidence on `meta` replaces the table's verdict with `false`. `whose` names the object
/// carrying it in the reason (`this volume`, `its PersistentVolume pv-1`).
pub(crate) fn apply_evidence(
    verdict: VolumeVerdict,
    marks: &Marks,
    keys: &Keys,
    whose: &str,
) -> VolumeVerdict {
    let Some(value) = marks
        .annotation(&keys.idmap_evidence)
        .filter(|v| !v.trim().is_empty())
    else {
        return verdict;
    };
    VolumeVerdict {
        verdict: Verdict::False,
        reason: format!(
            "A node could not idmap-mount {whose}: {}. This evidence overrides the driver table; remove the annotation {} to clear it.",
            describe_annotation(value),
            keys.idmap_evidence
        ),
        ..verdict
    }
}

/// Host paths an idmapped mount failed on, from the labeler's evidence ConfigMap: one entry per
/// path, keyed by [`host_path_key`], each an [`Evidence`] with its `path`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPathEvidence {
    /// Normalised path → its evidence.
    by_path: BTreeMap<String, Evidence>,
}

impl HostPathEvidence {
    /// The records of a ConfigMap's `data`; entries that are not evidence with a path are
    /// ignored (an operator's stray key must not break the webhook).
    pub fn from_data(data: &BTreeMap<String, String>) -> HostPathEvidence {
        let by_path = data
            .values()
            .filter_map(|text| Evidence::parse(text))
            .filter_map(|e| Some((normalize_path(e.path.as_deref()?)?, e)))
            .collect();
        HostPathEvidence { by_path }
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// The evidence for a pod's hostPath `path`: recorded for that path or for a directory
    /// above it (a subdirectory of a mount that cannot be idmapped cannot be either).
    pub fn lookup(&self, path: &str) -> Option<&Evidence> {
        let path = normalize_path(path)?;
        let mut candidate = path.as_str();
        loop {
            if let Some(evidence) = self.by_path.get(candidate) {
                return Some(evidence);
            }
            if candidate == "/" {
                return None;
            }
            candidate = match candidate.rfind('/') {
                Some(0) => "/",
                Some(at) => &candidate[..at],
                None => return None,
            };
        }
    }
}

/// The ConfigMap key of a host path's entry: `host-path.` and 16 hex digits of its FNV-1a
/// hash (ConfigMap keys cannot hold `/`; the path itself is in the entry).
pub fn host_path_key(path: &str) -> String {
    let normalized = normalize_path(path).unwrap_or_else(|| path.to_string());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in normalized.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("host-path.{hash:016x}")
}

/// An absolute path with `.`, `..`, repeated and trailing slashes resolved lexically; `None`
/// for a relative path.
pub fn normalize_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(path: Option<&str>) -> Evidence {
        Evidence {
            pod: "app/web-1".into(),
            node: "node-a".into(),
            time: "2026-05-01T10:00:00Z".into(),
            runtime: "runc".into(),
            error: "failed to set MOUNT_ATTR_IDMAP on /mnt/fuse: invalid argument".into(),
            path: path.map(String::from),
        }
    }

    #[test]
    fn evidence_round_trips_through_its_json() {
        let e = evidence(Some("/mnt/fuse"));
        assert_eq!(Evidence::parse(&e.to_json()), Some(e));
        assert_eq!(Evidence::parse("not json"), None);
    }

    #[test]
    fn the_first_line_is_kept_and_cut_on_a_character_boundary() {
        assert_eq!(first_line("one\ntwo", 100), "one");
        assert_eq!(first_line(&"é".repeat(10), 5), "éé");
        assert_eq!(first_line("", 10), "");
    }

    #[test]
    fn a_hand_written_annotation_is_still_evidence() {
        assert!(describe_annotation("fails on our FUSE nodes").contains("fails on our FUSE"));
    }

    #[test]
    fn paths_normalise_lexically_and_relative_paths_are_refused() {
        assert_eq!(
            normalize_path("/mnt//fuse/./a/../").as_deref(),
            Some("/mnt/fuse")
        );
        assert_eq!(normalize_path("/").as_deref(), Some("/"));
        assert_eq!(normalize_path("mnt/fuse"), None);
    }

    #[test]
    fn host_path_evidence_covers_the_path_and_what_lies_below_it() {
        let e = evidence(Some("/mnt/fuse/"));
        let data = BTreeMap::from([
            (host_path_key("/mnt/fuse"), e.to_json()),
            ("stray".to_string(), "{\"not\": \"evidence\"}".to_string()),
        ]);
        let records = HostPathEvidence::from_data(&data);
        assert_eq!(records.len(), 1);
        assert_eq!(records.lookup("/mnt/fuse"), Some(&e));
        assert_eq!(records.lookup("/mnt/fuse/sub/dir"), Some(&e));
        assert_eq!(
            records.lookup("/mnt/fuse2"),
            None,
            "a sibling is another path"
        );
        assert_eq!(
            records.lookup("/mnt"),
            None,
            "the directory above may be ext4"
        );
        assert_eq!(records.lookup("relative"), None);
    }

    #[test]
    fn host_path_keys_are_valid_configmap_keys_and_ignore_spelling() {
        let key = host_path_key("/mnt/fuse");
        assert_eq!(key, host_path_key("/mnt//fuse/"));
        assert_ne!(key, host_path_key("/mnt/fuse2"));
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        );
    }
}
