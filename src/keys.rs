//! Label and annotation keys, all under one configurable domain prefix (default `userns.io`).

use std::sync::LazyLock;

/// The default domain prefix.
pub const DEFAULT_PREFIX: &str = "userns.io";

/// The names (after `<prefix>/`) of the keys on claims and volumes: the label, and the reason,
/// driver and override annotations.
pub mod names {
    pub const SUPPORTED: &str = "idmap-supported";
    pub const REASON: &str = "idmap-reason";
    pub const DRIVER: &str = "driver";
    pub const OVERRIDE: &str = "idmap-override";
    pub const EVIDENCE: &str = "idmap-evidence";
}

/// Every key this project reads or writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    /// Label on PVCs and PVs: `true` / `false` / `unknown`.
    pub supported: String,
    /// Annotation on PVCs and PVs: the reason sentence for the label.
    pub reason: String,
    /// Annotation on PVCs and PVs: the resolved storage driver.
    pub driver: String,
    /// Annotation on a PVC or PV set by the operator: `"true"` or `"false"` overrides the table.
    pub idmap_override: String,
    /// Annotation on pods: one of the [`decision`] values.
    pub decision: String,
    /// Annotation on pods: why.
    pub decision_reason: String,
    /// Label on a namespace or pod: `"true"` opts out of the webhook.
    pub opt_out: String,
    /// Annotation on PVCs, PVs and Nodes: what a node's runtime reported when an idmapped mount
    /// failed (JSON: pod, node, time, runtime, error). It makes the label `false`; the operator
    /// clears it by removing the annotation.
    pub idmap_evidence: String,
    /// Label on Nodes: `true` / `false`, whether the node's runtime can run user-namespaced pods.
    pub user_namespaces: String,
    /// Annotation on Nodes: why the node is labelled so.
    pub user_namespaces_reason: String,
}

/// The values of the pod annotation `<prefix>/decision`: the one vocabulary of decisions. The
/// webhook writes them; `explain`, `report`, the README and the examples use the same words.
pub mod decision {
    /// `spec.hostUsers: false` was set (or, in `explain` and `report`, would be): nothing blocks.
    pub const ENABLED: &str = "enabled";
    /// Left as written: something blocks (the decision reason lists every blocker).
    pub const SKIPPED: &str = "skipped";
    /// Audit mode: nothing changed; the reason says what enforce mode would do.
    pub const AUDIT: &str = "audit";
    /// A reinvocation found a pod this webhook enabled no longer safe: `hostUsers` removed.
    pub const REVERTED: &str = "reverted";

    /// What enforce mode does with a pod: [`ENABLED`] when nothing blocks, else [`SKIPPED`].
    pub fn of(mutate: bool) -> &'static str {
        if mutate { ENABLED } else { SKIPPED }
    }
}

static DEFAULT_KEYS: LazyLock<Keys> =
    LazyLock::new(|| Keys::new(DEFAULT_PREFIX).expect("the default prefix is valid"));

impl Default for Keys {
    fn default() -> Self {
        DEFAULT_KEYS.clone()
    }
}

/// The prefix is not a valid DNS subdomain for a label key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid label prefix {0:?}: must be a lower-case DNS subdomain of at most 253 characters, such as userns.io"
)]
pub struct InvalidPrefix(pub String);

impl Keys {
    pub fn new(prefix: &str) -> Result<Keys, InvalidPrefix> {
        if !is_dns_subdomain(prefix) {
            return Err(InvalidPrefix(prefix.to_string()));
        }
        let key = |name: &str| format!("{prefix}/{name}");
        Ok(Keys {
            prefix: prefix.to_string(),
            supported: key(names::SUPPORTED),
            reason: key(names::REASON),
            driver: key(names::DRIVER),
            idmap_override: key(names::OVERRIDE),
            decision: key("decision"),
            decision_reason: key("decision-reason"),
            opt_out: key("opt-out"),
            idmap_evidence: key(names::EVIDENCE),
            user_namespaces: key("user-namespaces"),
            user_namespaces_reason: key("user-namespaces-reason"),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_keys_use_userns_io() {
        let keys = Keys::default();
        assert_eq!(keys.supported, "userns.io/idmap-supported");
        assert_eq!(keys.idmap_override, "userns.io/idmap-override");
        assert_eq!(keys.decision_reason, "userns.io/decision-reason");
        assert_eq!(keys.idmap_evidence, "userns.io/idmap-evidence");
        assert_eq!(keys.user_namespaces, "userns.io/user-namespaces");
    }

    #[test]
    fn a_custom_prefix_moves_every_key() {
        let keys = Keys::new("security.example.com").unwrap();
        assert_eq!(keys.supported, "security.example.com/idmap-supported");
        assert_eq!(keys.opt_out, "security.example.com/opt-out");
    }

    #[rstest::rstest]
    #[case("")]
    #[case("Userns.io")]
    #[case("userns.io/")]
    #[case("-userns.io")]
    #[case("userns..io")]
    fn invalid_prefixes_are_rejected(#[case] prefix: &str) {
        assert_eq!(Keys::new(prefix), Err(InvalidPrefix(prefix.to_string())));
    }
}
