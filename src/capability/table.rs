//! The driver table: an ordered list of rules mapping a storage driver (narrowed by access mode,
//! volume mode, fsType and class parameters) to an idmap verdict. First match wins.
//!
//! The same format serves the built-in default (`config/drivers.yaml`, embedded) and the operator's
//! ConfigMap. Operator rules are evaluated before the defaults unless `replaceDefaults: true`.
//! See `config/README.md` for the operator documentation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// The built-in table, as shipped in `config/drivers.yaml`.
pub const DEFAULT_TABLE_YAML: &str = include_str!("../../config/drivers.yaml");

/// Upper bound on the compiled size of one operator-supplied regex (bytes).
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Whether a volume can be idmap-mounted. Ordered from least to most restrictive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    True,
    Unknown,
    False,
}

impl Verdict {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::True => "true",
            Verdict::Unknown => "unknown",
            Verdict::False => "false",
        }
    }

    /// Parses a label value or ConfigMap verdict (`true`, `false`, `unknown`).
    pub fn parse(value: &str) -> Option<Verdict> {
        match value {
            "true" => Some(Verdict::True),
            "false" => Some(Verdict::False),
            "unknown" => Some(Verdict::Unknown),
            _ => None,
        }
    }

    /// `false` over `unknown` over `true`.
    pub fn most_restrictive(self, other: Verdict) -> Verdict {
        self.max(other)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VerdictVisitor;
        impl Visitor<'_> for VerdictVisitor {
            type Value = Verdict;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or unknown")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Verdict, E> {
                Ok(if v { Verdict::True } else { Verdict::False })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Verdict, E> {
                Verdict::parse(v).ok_or_else(|| {
                    E::custom(format!(
                        "unknown verdict {v:?} (expected true, false or unknown)"
                    ))
                })
            }
        }
        deserializer.deserialize_any(VerdictVisitor)
    }
}

/// A Kubernetes access mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadOnlyMany,
    ReadWriteMany,
    ReadWriteOncePod,
}

impl AccessMode {
    pub const ALL: [AccessMode; 4] = [
        AccessMode::ReadWriteOnce,
        AccessMode::ReadOnlyMany,
        AccessMode::ReadWriteMany,
        AccessMode::ReadWriteOncePod,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadOnlyMany => "ReadOnlyMany",
            AccessMode::ReadWriteMany => "ReadWriteMany",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
        }
    }

    pub fn parse(value: &str) -> Option<AccessMode> {
        AccessMode::ALL.into_iter().find(|m| m.as_str() == value)
    }
}

/// A claim's or volume's `volumeMode`; absent means `Filesystem`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VolumeMode {
    #[default]
    Filesystem,
    Block,
}

impl VolumeMode {
    pub fn parse(value: &str) -> Option<VolumeMode> {
        match value {
            "Filesystem" => Some(VolumeMode::Filesystem),
            "Block" => Some(VolumeMode::Block),
            _ => None,
        }
    }
}

/// Where a rule's `parameters` are looked up: a map (a class's parameters, an inline CSI
/// volume's attributes), a cached PV's attribute list, or a PV's attributes over its class's.
pub trait Parameters: fmt::Debug {
    fn parameter(&self, key: &str) -> Option<&str>;
}

impl Parameters for BTreeMap<String, String> {
    fn parameter(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// What the table is asked about: one storage driver in one access mode.
#[derive(Clone, Copy, Debug)]
pub struct StorageQuery<'a> {
    pub driver: &'a str,
    /// `None` for volumes without access modes (inline CSI volumes).
    pub access_mode: Option<AccessMode>,
    pub volume_mode: VolumeMode,
    pub fs_type: Option<&'a str>,
    /// StorageClass parameters, under the PV's CSI `volumeAttributes` of the same key.
    pub parameters: &'a dyn Parameters,
    /// The host path of a hostPath volume or PV (rules with `pathPrefixes` need one).
    pub host_path: Option<&'a str>,
}

/// Where a rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleOrigin {
    Operator,
    BuiltIn,
}

/// A validated rule.
#[derive(Debug)]
pub struct Rule {
    /// Position in its own list (operator or built-in), as written.
    pub index: usize,
    pub origin: RuleOrigin,
    driver: DriverMatch,
    access_modes: Option<Vec<AccessMode>>,
    volume_mode: Option<VolumeMode>,
    fs_types: Option<Vec<String>>,
    parameters: Vec<ParameterMatch>,
    /// Normalised absolute paths; the host path must be one of them or lie below one.
    path_prefixes: Option<Vec<String>>,
    pub verdict: Verdict,
    pub reason: String,
    pub min_kernel: Option<String>,
    pub source: Option<String>,
}

#[derive(Debug)]
enum DriverMatch {
    Exact(Vec<String>),
    Pattern(Regex),
}

#[derive(Debug)]
struct ParameterMatch {
    key: String,
    condition: ParameterCondition,
}

#[derive(Debug)]
enum ParameterCondition {
    Present(bool),
    Equals(String),
    Matches(Regex),
}

impl Rule {
    /// Everything but the driver name, which the table's index has matched already.
    fn matches_volume(&self, query: &StorageQuery<'_>) -> bool {
        self.access_modes
            .as_ref()
            .is_none_or(|modes| query.access_mode.is_some_and(|mode| modes.contains(&mode)))
            && self
                .volume_mode
                .is_none_or(|mode| mode == query.volume_mode)
            && self.fs_types.as_ref().is_none_or(|types| {
                query
                    .fs_type
                    .is_some_and(|fs| types.iter().any(|t| t.eq_ignore_ascii_case(fs)))
            })
            && self.path_prefixes.as_ref().is_none_or(|prefixes| {
                query
                    .host_path
                    .is_some_and(|path| under_any(path, prefixes))
            })
            && self.parameters.iter().all(|p| {
                let value = query.parameters.parameter(&p.key);
                match &p.condition {
                    ParameterCondition::Present(want) => value.is_some() == *want,
                    ParameterCondition::Equals(expected) => value == Some(expected.as_str()),
                    ParameterCondition::Matches(re) => value.is_some_and(|v| re.is_match(v)),
                }
            })
    }

    /// How the rule names its driver in messages.
    pub fn driver_display(&self) -> String {
        match &self.driver {
            DriverMatch::Exact(names) => names.join(", "),
            DriverMatch::Pattern(re) => format!("/{}/", strip_anchors(re.as_str())),
        }
    }
}

/// Whether `path` (normalised lexically) is one of `prefixes` or lies below one.
fn under_any(path: &str, prefixes: &[String]) -> bool {
    let Some(path) = super::evidence::normalize_path(path) else {
        return false;
    };
    prefixes.iter().any(|prefix| {
        prefix == "/"
            || path == *prefix
            || path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

fn strip_anchors(anchored: &str) -> &str {
    anchored
        .strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(anchored)
}

/// The outcome of evaluating the table for one volume over all its access modes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub reason: String,
}

/// An ordered, validated rule list: operator rules (if any) first, then the defaults.
#[derive(Debug)]
pub struct DriverTable {
    rules: Vec<Rule>,
    /// Exact driver name → indices of the rules naming it, ascending.
    exact: HashMap<String, Vec<usize>>,
    /// All driver patterns at once, so a driver name is matched against them in one pass.
    patterns: RegexSet,
    /// Rule index of each pattern in `patterns`.
    pattern_rules: Vec<usize>,
    /// Driver name → its candidate rules, memoised: a cluster has few distinct drivers, and
    /// matching the pattern set once per driver keeps regexes off the per-claim path.
    memo: RwLock<HashMap<String, Arc<[usize]>>>,
}

/// At most this many driver names are memoised (names come from cluster objects).
const MEMO_LIMIT: usize = 1024;

static DEFAULTS: LazyLock<Arc<DriverTable>> = LazyLock::new(|| {
    let rules = parse_rules(
        DEFAULT_TABLE_YAML,
        "config/drivers.yaml",
        RuleOrigin::BuiltIn,
    )
    .map(|doc| doc.rules)
    // The built-in table is validated by a unit test; an error here is a build defect.
    .unwrap_or_else(|e| panic!("built-in driver table is invalid: {e}"));
    Arc::new(
        DriverTable::new(rules).unwrap_or_else(|e| panic!("built-in driver table is invalid: {e}")),
    )
});

impl DriverTable {
    /// The built-in table.
    pub fn defaults() -> Arc<DriverTable> {
        DEFAULTS.clone()
    }

    /// Builds the effective table from an operator document (ConfigMap `drivers.yaml` or a
    /// `--drivers` file): its rules first, then the built-in ones unless `replaceDefaults: true`.
    /// `origin` names the document in error messages.
    pub fn from_operator_yaml(yaml: &str, origin: &str) -> Result<DriverTable, TableError> {
        let doc = parse_rules(yaml, origin, RuleOrigin::Operator)?;
        let mut rules = doc.rules;
        if !doc.replace_defaults {
            // Re-parse rather than clone: compiled rules are cheap to rebuild and this runs
            // only when the operator's document changes.
            let defaults = parse_rules(
                DEFAULT_TABLE_YAML,
                "config/drivers.yaml",
                RuleOrigin::BuiltIn,
            )?;
            rules.extend(defaults.rules);
        }
        DriverTable::new(rules).map_err(|message| TableError::Document {
            origin: origin.to_string(),
            field: "rules".to_string(),
            message,
        })
    }

    /// Indexes the rules by driver; fails only if the combined pattern set is too large.
    fn new(rules: Vec<Rule>) -> Result<DriverTable, String> {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut patterns = Vec::new();
        let mut pattern_rules = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            match &rule.driver {
                DriverMatch::Exact(names) => {
                    for name in names {
                        let indices = exact.entry(name.clone()).or_default();
                        if indices.last() != Some(&i) {
                            indices.push(i);
                        }
                    }
                }
                DriverMatch::Pattern(re) => {
                    patterns.push(re.as_str().to_string());
                    pattern_rules.push(i);
                }
            }
        }
        let limit = REGEX_SIZE_LIMIT * (patterns.len() + 1);
        let patterns = RegexSetBuilder::new(&patterns)
            .size_limit(limit)
            .dfa_size_limit(limit)
            .build()
            .map_err(|e| {
                format!(
                    "the driver patterns together are too large: {}",
                    one_line(&e.to_string())
                )
            })?;
        Ok(DriverTable {
            rules,
            exact,
            patterns,
            pattern_rules,
            memo: RwLock::default(),
        })
    }

    /// Indices of the rules whose driver part matches `driver`, in table order.
    fn candidates(&self, driver: &str) -> Arc<[usize]> {
        let memo = self.memo.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = memo.get(driver) {
            return found.clone();
        }
        drop(memo);
        let found: Arc<[usize]> = self.match_driver(driver).into();
        let mut memo = self.memo.write().unwrap_or_else(PoisonError::into_inner);
        if memo.len() < MEMO_LIMIT {
            memo.insert(driver.to_string(), found.clone());
        }
        found
    }

    fn match_driver(&self, driver: &str) -> Vec<usize> {
        let mut found: Vec<usize> = self.exact.get(driver).cloned().unwrap_or_default();
        if !self.pattern_rules.is_empty() {
            found.extend(
                self.patterns
                    .matches(driver)
                    .into_iter()
                    .map(|p| self.pattern_rules[p]),
            );
            found.sort_unstable();
        }
        found
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first rule matching one query.
    pub fn lookup(&self, query: &StorageQuery<'_>) -> Option<&Rule> {
        self.candidates(query.driver)
            .iter()
            .map(|&i| &self.rules[i])
            .find(|r| r.matches_volume(query))
    }

    /// Evaluates a volume in each of its access modes and returns the most restrictive result.
    /// With no access modes the table is asked once, without a mode.
    pub fn evaluate(
        &self,
        driver: &str,
        access_modes: &[AccessMode],
        volume_mode: VolumeMode,
        fs_type: Option<&str>,
        parameters: &dyn Parameters,
    ) -> Evaluation {
        self.evaluate_at(driver, access_modes, volume_mode, fs_type, parameters, None)
    }

    /// [`evaluate`](Self::evaluate) for a volume with a host path (hostPath volumes and PVs),
    /// which rules narrowed by `pathPrefixes` match on.
    pub fn evaluate_at(
        &self,
        driver: &str,
        access_modes: &[AccessMode],
        volume_mode: VolumeMode,
        fs_type: Option<&str>,
        parameters: &dyn Parameters,
        host_path: Option<&str>,
    ) -> Evaluation {
        let candidates = self.candidates(driver);
        let ask = |access_mode| {
            let query = StorageQuery {
                driver,
                access_mode,
                volume_mode,
                fs_type,
                parameters,
                host_path,
            };
            let rule = candidates
                .iter()
                .map(|&i| &self.rules[i])
                .find(|r| r.matches_volume(&query));
            match rule {
                Some(rule) => (rule.verdict, rule.reason.as_str()),
                None => (
                    Verdict::Unknown,
                    "No rule in the driver table matches this driver.",
                ),
            }
        };
        let mut worst = if access_modes.is_empty() {
            ask(None)
        } else {
            let mut worst = ask(Some(access_modes[0]));
            for &mode in &access_modes[1..] {
                let next = ask(Some(mode));
                if next.0 > worst.0 {
                    worst = next;
                }
            }
            worst
        };
        if worst.1.is_empty() {
            worst.1 = "Matched a rule without a reason.";
        }
        Evaluation {
            verdict: worst.0,
            reason: worst.1.to_string(),
        }
    }
}

/// A located error in a driver table document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("{origin}: malformed YAML: {message}")]
    Yaml { origin: String, message: String },
    #[error("{origin}: field {field}: {message}")]
    Document {
        origin: String,
        field: String,
        message: String,
    },
    #[error("{origin}: rules[{index}] ({driver}): field {field}: {message}")]
    Rule {
        origin: String,
        index: usize,
        driver: String,
        field: String,
        message: String,
    },
}

/// The top level of a table document. Rules are kept as generic values so that each one can be
/// decoded separately and its errors located by index and driver.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDocument {
    #[serde(default)]
    replace_defaults: bool,
    #[serde(default)]
    rules: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    #[serde(default)]
    driver: Option<OneOrMany>,
    #[serde(default)]
    driver_regex: Option<String>,
    #[serde(default)]
    access_modes: Option<Vec<String>>,
    #[serde(default)]
    volume_mode: Option<String>,
    #[serde(default)]
    fs_types: Option<Vec<String>>,
    #[serde(default)]
    parameters: Vec<RawParameter>,
    #[serde(default)]
    path_prefixes: Option<Vec<String>>,
    verdict: Verdict,
    reason: String,
    #[serde(default)]
    min_kernel: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a driver name or a list of driver names")]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParameter {
    key: String,
    #[serde(default)]
    present: Option<bool>,
    #[serde(default)]
    equals: Option<String>,
    #[serde(default)]
    regex: Option<String>,
}

struct ParsedDocument {
    replace_defaults: bool,
    rules: Vec<Rule>,
}

fn parse_rules(
    yaml: &str,
    origin: &str,
    rule_origin: RuleOrigin,
) -> Result<ParsedDocument, TableError> {
    let value: serde_json::Value = if yaml.trim().is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_saphyr::from_str(yaml).map_err(|e| TableError::Yaml {
            origin: origin.to_string(),
            message: e.to_string(),
        })?
    };
    let value = if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value
    };
    let doc: RawDocument =
        serde_path_to_error::deserialize(value).map_err(|e| TableError::Document {
            origin: origin.to_string(),
            field: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
    let rules = doc
        .rules
        .into_iter()
        .enumerate()
        .map(|(index, raw)| compile_rule(index, raw, origin, rule_origin))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParsedDocument {
        replace_defaults: doc.replace_defaults,
        rules,
    })
}

/// How a raw rule names its driver, for error messages, even when the rule does not decode.
fn raw_driver_display(raw: &serde_json::Value) -> String {
    match (raw.get("driver"), raw.get("driverRegex")) {
        (Some(serde_json::Value::String(s)), _) => format!("driver {s:?}"),
        (Some(serde_json::Value::Array(a)), _) => {
            let names: Vec<&str> = a.iter().filter_map(|v| v.as_str()).collect();
            format!("driver {:?}", names.join(", "))
        }
        (_, Some(serde_json::Value::String(s))) => format!("driverRegex {s:?}"),
        (Some(other), _) => format!("driver {other}"),
        (_, Some(other)) => format!("driverRegex {other}"),
        _ => "no driver".to_string(),
    }
}

fn compile_rule(
    index: usize,
    raw: serde_json::Value,
    origin: &str,
    rule_origin: RuleOrigin,
) -> Result<Rule, TableError> {
    let driver_name = raw_driver_display(&raw);
    let fail = |field: &str, message: String| TableError::Rule {
        origin: origin.to_string(),
        index,
        driver: driver_name.clone(),
        field: field.to_string(),
        message,
    };
    if !raw.is_object() {
        return Err(fail(".", "a rule must be a mapping".to_string()));
    }
    let rule: RawRule = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        fail(if path == "." { "." } else { &path }, e.inner().to_string())
    })?;

    let driver = match (rule.driver, rule.driver_regex) {
        (Some(_), Some(_)) => {
            return Err(fail(
                "driver",
                "set either driver or driverRegex, not both".to_string(),
            ));
        }
        (None, None) => {
            return Err(fail(
                "driver",
                "empty match: a rule needs driver or driverRegex".to_string(),
            ));
        }
        (Some(names), None) => {
            let names = match names {
                OneOrMany::One(n) => vec![n],
                OneOrMany::Many(ns) => ns,
            };
            if names.is_empty() || names.iter().any(|n| n.trim().is_empty()) {
                return Err(fail(
                    "driver",
                    "empty match: driver names must not be empty".to_string(),
                ));
            }
            DriverMatch::Exact(names)
        }
        (None, Some(pattern)) => {
            if pattern.trim().is_empty() {
                return Err(fail(
                    "driverRegex",
                    "empty match: the pattern must not be empty".to_string(),
                ));
            }
            DriverMatch::Pattern(compile_anchored(&pattern).map_err(|m| fail("driverRegex", m))?)
        }
    };

    let access_modes = rule
        .access_modes
        .map(|modes| {
            if modes.is_empty() {
                return Err(fail(
                    "accessModes",
                    "empty list: omit the field to match every access mode".to_string(),
                ));
            }
            modes
                .iter()
                .map(|m| {
                    AccessMode::parse(m).ok_or_else(|| {
                        fail(
                            "accessModes",
                            format!(
                                "unknown access mode {m:?} (expected ReadWriteOnce, ReadOnlyMany, ReadWriteMany or ReadWriteOncePod)"
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;

    let volume_mode = rule
        .volume_mode
        .map(|m| {
            VolumeMode::parse(&m).ok_or_else(|| {
                fail(
                    "volumeMode",
                    format!("unknown volume mode {m:?} (expected Filesystem or Block)"),
                )
            })
        })
        .transpose()?;

    if let Some(types) = &rule.fs_types
        && (types.is_empty() || types.iter().any(|t| t.trim().is_empty()))
    {
        return Err(fail(
            "fsTypes",
            "empty fsType: list filesystem names such as ext4".to_string(),
        ));
    }

    let parameters = rule
        .parameters
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("parameters[{i}]");
            if p.key.is_empty() {
                return Err(fail(&field, "empty key".to_string()));
            }
            let condition = match (p.present, p.equals, p.regex) {
                (Some(present), None, None) => ParameterCondition::Present(present),
                (None, Some(value), None) => ParameterCondition::Equals(value),
                (None, None, Some(pattern)) => ParameterCondition::Matches(
                    compile_anchored(&pattern).map_err(|m| fail(&format!("{field}.regex"), m))?,
                ),
                _ => {
                    return Err(fail(
                        &field,
                        format!(
                            "key {:?}: set exactly one of present, equals or regex",
                            p.key
                        ),
                    ));
                }
            };
            Ok(ParameterMatch {
                key: p.key,
                condition,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let path_prefixes = rule
        .path_prefixes
        .map(|prefixes| {
            let host_path_only = matches!(&driver, DriverMatch::Exact(names)
                if names.iter().all(|n| n == super::sources::pseudo::HOST_PATH));
            if !host_path_only {
                return Err(fail(
                    "pathPrefixes",
                    format!(
                        "only rules for driver {} (hostPath volumes and PVs) can be narrowed by path",
                        super::sources::pseudo::HOST_PATH
                    ),
                ));
            }
            if prefixes.is_empty() {
                return Err(fail(
                    "pathPrefixes",
                    "empty list: omit the field to match every path".to_string(),
                ));
            }
            prefixes
                .iter()
                .map(|p| {
                    super::evidence::normalize_path(p).ok_or_else(|| {
                        fail(
                            "pathPrefixes",
                            format!("{p:?} is not an absolute path such as /mnt/fuse"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;

    if rule.reason.trim().is_empty() {
        return Err(fail("reason", "a rule needs a reason sentence".to_string()));
    }
    if let Some(kernel) = &rule.min_kernel
        && !is_kernel_version(kernel)
    {
        return Err(fail(
            "minKernel",
            format!("{kernel:?} is not a kernel version such as \"5.12\""),
        ));
    }

    Ok(Rule {
        index,
        origin: rule_origin,
        driver,
        access_modes,
        volume_mode,
        fs_types: rule.fs_types,
        parameters,
        path_prefixes,
        verdict: rule.verdict,
        reason: rule.reason.trim().to_string(),
        min_kernel: rule.min_kernel,
        source: rule.source,
    })
}

fn is_kernel_version(v: &str) -> bool {
    let mut parts = v.split('.');
    let major = parts
        .next()
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    major && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Compiles an operator pattern anchored at both ends, with a bounded compiled size.
fn compile_anchored(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex {pattern:?}: {}", one_line(&e.to_string())))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn operator(yaml: &str) -> Result<DriverTable, TableError> {
        DriverTable::from_operator_yaml(yaml, "test.yaml")
    }

    fn verdict(
        table: &DriverTable,
        driver: &str,
        modes: &[AccessMode],
        p: &BTreeMap<String, String>,
    ) -> Verdict {
        table
            .evaluate(driver, modes, VolumeMode::Filesystem, None, p)
            .verdict
    }

    #[test]
    fn built_in_table_is_valid_and_large() {
        let table = DriverTable::defaults();
        assert!(
            table.rules().len() >= 40,
            "only {} rules",
            table.rules().len()
        );
        assert!(
            table
                .rules()
                .iter()
                .all(|r| r.origin == RuleOrigin::BuiltIn)
        );
    }

    #[test]
    fn first_matching_rule_wins() {
        let table = operator(
            "replaceDefaults: true\nrules:\n- driver: a.example.com\n  verdict: false\n  reason: first\n- driver: a.example.com\n  verdict: true\n  reason: second\n",
        )
        .unwrap();
        let e = table.evaluate(
            "a.example.com",
            &[],
            VolumeMode::Filesystem,
            None,
            &params(&[]),
        );
        assert_eq!((e.verdict, e.reason.as_str()), (Verdict::False, "first"));
    }

    #[test]
    fn operator_rules_come_before_defaults_unless_replaced() {
        let doc =
            "rules:\n- driver: ebs.csi.aws.com\n  verdict: unknown\n  reason: operator says so\n";
        let merged = operator(doc).unwrap();
        assert_eq!(merged.rules()[0].origin, RuleOrigin::Operator);
        assert_eq!(
            verdict(
                &merged,
                "ebs.csi.aws.com",
                &[AccessMode::ReadWriteOnce],
                &params(&[])
            ),
            Verdict::Unknown
        );
        assert!(merged.rules().len() > 40);

        let replaced = operator(&format!("replaceDefaults: true\n{doc}")).unwrap();
        assert_eq!(replaced.rules().len(), 1);
        assert_eq!(
            verdict(&replaced, "driver.longhorn.io", &[], &params(&[])),
            Verdict::Unknown
        );
    }

    #[test]
    fn empty_operator_document_means_defaults() {
        let table = operator("").unwrap();
        assert_eq!(table.rules().len(), DriverTable::defaults().rules().len());
    }

    #[test]
    fn unmatched_driver_is_unknown() {
        let e = DriverTable::defaults().evaluate(
            "made-up.csi.example.com",
            &[AccessMode::ReadWriteOnce],
            VolumeMode::Filesystem,
            None,
            &params(&[]),
        );
        assert_eq!(e.verdict, Verdict::Unknown);
        assert!(e.reason.contains("No rule"), "{}", e.reason);
    }

    #[test]
    fn regex_is_anchored_at_both_ends() {
        let table = operator(
            "replaceDefaults: true\nrules:\n- driverRegex: 'nfs\\.example\\.com'\n  verdict: false\n  reason: nfs\n",
        )
        .unwrap();
        let p = params(&[]);
        assert_eq!(verdict(&table, "nfs.example.com", &[], &p), Verdict::False);
        assert_eq!(
            verdict(&table, "x.nfs.example.com", &[], &p),
            Verdict::Unknown
        );
        assert_eq!(
            verdict(&table, "nfs.example.com.evil", &[], &p),
            Verdict::Unknown
        );
    }

    #[test]
    fn parameter_conditions_present_equals_regex_and_absent() {
        let table = operator(
            r#"replaceDefaults: true
rules:
- driver: d
  parameters: [{key: a, present: true}]
  verdict: false
  reason: a present
- driver: d
  parameters: [{key: b, equals: "x"}]
  verdict: false
  reason: b equals x
- driver: d
  parameters: [{key: c, regex: 'ontap-nas.*'}]
  verdict: false
  reason: c matches
- driver: d
  parameters: [{key: z, present: false}]
  verdict: true
  reason: z absent
"#,
        )
        .unwrap();
        let ask = |p: &[(&str, &str)]| {
            table
                .evaluate("d", &[], VolumeMode::Filesystem, None, &params(p))
                .reason
        };
        assert_eq!(ask(&[("a", "")]), "a present");
        assert_eq!(ask(&[("b", "x")]), "b equals x");
        assert_eq!(ask(&[("b", "y")]), "z absent");
        assert_eq!(ask(&[("c", "ontap-nas-economy")]), "c matches");
        assert_eq!(ask(&[("c", "xontap-nas")]), "z absent");
        assert_eq!(
            ask(&[("z", "1")]),
            "No rule in the driver table matches this driver."
        );
    }

    #[test]
    fn several_access_modes_take_the_most_restrictive_verdict() {
        let table = operator(
            "replaceDefaults: true\nrules:\n- driver: d\n  accessModes: [ReadWriteMany]\n  verdict: false\n  reason: rwx\n- driver: d\n  accessModes: [ReadOnlyMany]\n  verdict: unknown\n  reason: rox\n- driver: d\n  verdict: true\n  reason: any\n",
        )
        .unwrap();
        use AccessMode::*;
        let p = params(&[]);
        assert_eq!(verdict(&table, "d", &[ReadWriteOnce], &p), Verdict::True);
        assert_eq!(
            verdict(&table, "d", &[ReadWriteOnce, ReadOnlyMany], &p),
            Verdict::Unknown
        );
        assert_eq!(
            verdict(&table, "d", &[ReadWriteOnce, ReadWriteMany], &p),
            Verdict::False
        );
        assert_eq!(
            verdict(
                &table,
                "d",
                &[ReadWriteMany, ReadOnlyMany, ReadWriteOnce],
                &p
            ),
            Verdict::False
        );
        // A rule narrowed by access mode never matches a volume without one.
        assert_eq!(verdict(&table, "d", &[], &p), Verdict::True);
    }

    #[test]
    fn fs_type_narrowing_is_case_insensitive_and_needs_a_known_fs_type() {
        let table = operator(
            "replaceDefaults: true\nrules:\n- driver: d\n  fsTypes: [ext4, xfs]\n  verdict: true\n  reason: block fs\n",
        )
        .unwrap();
        let p = params(&[]);
        let ask = |fs| {
            table
                .evaluate("d", &[], VolumeMode::Filesystem, fs, &p)
                .verdict
        };
        assert_eq!(ask(Some("XFS")), Verdict::True);
        assert_eq!(ask(Some("nfs")), Verdict::Unknown);
        assert_eq!(ask(None), Verdict::Unknown);
    }

    #[test]
    fn yaml_booleans_and_strings_are_both_verdicts() {
        let table = operator(
            "replaceDefaults: true\nrules:\n- {driver: a, verdict: true, reason: r}\n- {driver: b, verdict: \"false\", reason: r}\n- {driver: c, verdict: unknown, reason: r}\n",
        )
        .unwrap();
        let p = params(&[]);
        assert_eq!(verdict(&table, "a", &[], &p), Verdict::True);
        assert_eq!(verdict(&table, "b", &[], &p), Verdict::False);
        assert_eq!(verdict(&table, "c", &[], &p), Verdict::Unknown);
    }

    /// Each validation error class names the document, the rule index, its driver and the field.
    #[rstest::rstest]
    #[case::bad_regex(
        "rules:\n- driverRegex: 'foo(['\n  verdict: false\n  reason: r\n",
        "test.yaml: rules[0] (driverRegex \"foo([\"): field driverRegex: invalid regex"
    )]
    #[case::bad_parameter_regex(
        "rules:\n- driver: x\n  verdict: false\n  reason: r\n- driver: y.example.com\n  parameters: [{key: k, regex: '(' }]\n  verdict: false\n  reason: r\n",
        "test.yaml: rules[1] (driver \"y.example.com\"): field parameters[0].regex: invalid regex"
    )]
    #[case::unknown_field(
        "rules:\n- driver: x\n  verdikt: false\n  verdict: false\n  reason: r\n",
        "test.yaml: rules[0] (driver \"x\"): field verdikt: unknown field `verdikt`"
    )]
    #[case::unknown_top_level_field(
        "replaceDefault: true\nrules: []\n",
        "test.yaml: field replaceDefault: unknown field `replaceDefault`"
    )]
    #[case::unknown_access_mode(
        "rules:\n- driver: x\n  accessModes: [ReadWriteAll]\n  verdict: false\n  reason: r\n",
        "test.yaml: rules[0] (driver \"x\"): field accessModes: unknown access mode \"ReadWriteAll\""
    )]
    #[case::empty_match(
        "rules:\n- verdict: false\n  reason: r\n",
        "test.yaml: rules[0] (no driver): field driver: empty match"
    )]
    #[case::empty_driver_list(
        "rules:\n- driver: []\n  verdict: false\n  reason: r\n",
        "test.yaml: rules[0] (driver \"\"): field driver: empty match"
    )]
    #[case::unknown_verdict(
        "rules:\n- driver: x\n  verdict: maybe\n  reason: r\n",
        "test.yaml: rules[0] (driver \"x\"): field verdict: unknown verdict \"maybe\""
    )]
    #[case::missing_reason(
        "rules:\n- driver: x\n  verdict: false\n",
        "test.yaml: rules[0] (driver \"x\"): field .: missing field `reason`"
    )]
    #[case::two_parameter_conditions(
        "rules:\n- driver: x\n  parameters: [{key: k, equals: a, present: true}]\n  verdict: false\n  reason: r\n",
        "test.yaml: rules[0] (driver \"x\"): field parameters[0]: key \"k\": set exactly one"
    )]
    #[case::unquoted_kernel(
        "rules:\n- driver: x\n  verdict: true\n  reason: r\n  minKernel: 5.12\n",
        "test.yaml: rules[0] (driver \"x\"): field minKernel: invalid type"
    )]
    #[case::malformed_yaml("rules: [\n- driver: x\n", "test.yaml: malformed YAML:")]
    fn invalid_tables_are_rejected_with_a_located_message(
        #[case] yaml: &str,
        #[case] expected_prefix: &str,
    ) {
        let err = operator(yaml).expect_err("must be rejected").to_string();
        assert!(
            err.starts_with(expected_prefix),
            "got: {err}\nwant prefix: {expected_prefix}"
        );
    }

    #[test]
    fn path_prefixes_narrow_host_path_rules_to_paths_at_or_below_them() {
        let table = operator(
            "rules:\n- driver: kubernetes.io/host-path\n  pathPrefixes: [/mnt/fuse, /srv/nfs/]\n  verdict: false\n  reason: FUSE and NFS mounts\n",
        )
        .unwrap();
        let ask = |path: Option<&str>| {
            table
                .evaluate_at(
                    "kubernetes.io/host-path",
                    &[],
                    VolumeMode::Filesystem,
                    None,
                    &params(&[]),
                    path,
                )
                .verdict
        };
        assert_eq!(ask(Some("/mnt/fuse")), Verdict::False);
        assert_eq!(ask(Some("/mnt/fuse/data")), Verdict::False);
        assert_eq!(
            ask(Some("/srv/nfs")),
            Verdict::False,
            "a trailing slash in the rule"
        );
        assert_eq!(
            ask(Some("/mnt/fuse/../other")),
            Verdict::True,
            "resolved lexically"
        );
        // Other paths fall through to the built-in rule (hostPath inherits the node's ext4).
        assert_eq!(
            ask(Some("/mnt/fuse2")),
            Verdict::True,
            "a sibling is not below"
        );
        assert_eq!(ask(Some("/var/data")), Verdict::True);
        assert_eq!(
            ask(None),
            Verdict::True,
            "no path: the narrowed rule never matches"
        );
    }

    #[rstest::rstest]
    #[case::other_driver(
        "rules:\n- driver: nfs.csi.k8s.io\n  pathPrefixes: [/mnt]\n  verdict: false\n  reason: r\n",
        "test.yaml: rules[0] (driver \"nfs.csi.k8s.io\"): field pathPrefixes: only rules for driver kubernetes.io/host-path"
    )]
    #[case::host_path_among_others(
        "rules:\n- driver: [kubernetes.io/host-path, kubernetes.io/local-volume]\n  pathPrefixes: [/mnt]\n  verdict: false\n  reason: r\n",
        "test.yaml: rules[0] (driver \"kubernetes.io/host-path, kubernetes.io/local-volume\"): field pathPrefixes: only rules"
    )]
    #[case::relative(
        "rules:\n- driver: kubernetes.io/host-path\n  pathPrefixes: [mnt/fuse]\n  verdict: false\n  reason: r\n",
        "test.yaml: rules[0] (driver \"kubernetes.io/host-path\"): field pathPrefixes: \"mnt/fuse\" is not an absolute path"
    )]
    #[case::empty(
        "rules:\n- driver: kubernetes.io/host-path\n  pathPrefixes: []\n  verdict: false\n  reason: r\n",
        "test.yaml: rules[0] (driver \"kubernetes.io/host-path\"): field pathPrefixes: empty list"
    )]
    fn path_prefixes_are_refused_where_they_cannot_apply(
        #[case] yaml: &str,
        #[case] expected_prefix: &str,
    ) {
        let err = operator(yaml).expect_err("must be rejected").to_string();
        assert!(
            err.starts_with(expected_prefix),
            "got: {err}\nwant prefix: {expected_prefix}"
        );
    }

    #[test]
    fn oversized_regex_is_rejected_not_compiled() {
        let yaml = "rules:\n- driverRegex: '(a{1000}){1000}'\n  verdict: false\n  reason: r\n";
        let err = operator(yaml).unwrap_err().to_string();
        assert!(err.contains("field driverRegex: invalid regex"), "{err}");
    }
}
