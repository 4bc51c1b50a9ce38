//! Reading Kubernetes manifests from files, directories and standard input: YAML (any number of
//! documents) or JSON (one value or several in a row), `kind: List` and typed lists
//! (`PodList`, …) expanded. Kept: claims, volumes, classes, pods and the workloads with a pod
//! template ([`WorkloadKind`]); other kinds are skipped as they are read.
//!
//! Memory follows what is kept, not the input's shape: each object is read into a JSON value
//! without its `status`, `metadata.managedFields` and `last-applied-configuration` annotation
//! (what `kubectl get -o yaml` adds), turned into its typed form at once, and the items of a
//! List are converted one by one as the parser reaches them. An object of a kind that is not
//! kept is skipped without being stored, once its `kind` has been seen.
//!
//! Errors name the file (`<stdin>` for `-`) and the document (and item of a List), and say
//! whether the input is malformed or over a safety limit.

use std::fmt;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod, PodTemplate, ReplicationController,
};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::capability::{Snapshot, Workload, WorkloadKind};

/// The path that means standard input.
pub const STDIN: &str = "-";

/// How standard input is named in errors.
pub const STDIN_NAME: &str = "<stdin>";

/// The default of [`ReadLimits::max_input_bytes`]: 1 GiB per file or stream, far above what
/// `kubectl get -A -o yaml` prints for a large cluster (20,000 full objects are about 80 MB).
pub const DEFAULT_MAX_INPUT_MIB: u64 = 1024;

/// The safety limits of the reader.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// The largest file or standard input read, in bytes.
    pub max_input_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_input_bytes: DEFAULT_MAX_INPUT_MIB * 1024 * 1024,
        }
    }
}

/// The objects found in a set of manifests.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Claims, volumes and classes: what pods are decided against.
    pub snapshot: Snapshot,
    /// Pods and workloads, in the order read.
    pub workloads: Vec<Workload>,
}

/// A manifest that could not be read, located by file and (1-based) document.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {document}{location}: malformed {format}: {message}")]
    Syntax {
        path: PathBuf,
        document: usize,
        location: String,
        format: &'static str,
        message: String,
    },
    #[error("{path}: document {document}{item}: {message}")]
    Object {
        path: PathBuf,
        document: usize,
        /// ` item N` inside a `kind: List`, else empty.
        item: String,
        message: String,
    },
    #[error("{path}: over a safety limit, not malformed: {message}")]
    Limit { path: PathBuf, message: String },
    #[error("{path}: no YAML or JSON files found")]
    Empty { path: PathBuf },
    #[error("standard input (-f -) can be read only once")]
    StdinTwice,
}

impl Manifests {
    /// Loads every path (directories recursively, `*.yaml`, `*.yml`, `*.json`, in name order;
    /// `-` is standard input) with the default limits.
    pub fn load(paths: &[PathBuf]) -> Result<Manifests, ManifestError> {
        Manifests::load_with(paths, ReadLimits::default(), &mut std::io::stdin().lock())
    }

    /// [`Manifests::load`] with these limits, `-` read from `stdin`.
    pub fn load_with(
        paths: &[PathBuf],
        limits: ReadLimits,
        stdin: &mut dyn io::Read,
    ) -> Result<Manifests, ManifestError> {
        let mut manifests = Manifests::default();
        let mut stdin_read = false;
        for path in paths {
            if path.as_os_str() == STDIN {
                if std::mem::replace(&mut stdin_read, true) {
                    return Err(ManifestError::StdinTwice);
                }
                let name = Path::new(STDIN_NAME);
                let text = read_limited(name, stdin, limits)?;
                manifests.add_text(name, &text)?;
                continue;
            }
            let files = collect_files(path)?;
            if files.is_empty() {
                return Err(ManifestError::Empty { path: path.clone() });
            }
            for file in files {
                let read_error = |source| ManifestError::Read {
                    path: file.clone(),
                    source,
                };
                let mut handle = fs::File::open(&file).map_err(read_error)?;
                let text = read_limited(&file, &mut handle, limits)?;
                manifests.add_text(&file, &text)?;
            }
        }
        Ok(manifests)
    }

    /// Adds the objects of one file's text; `path` names it in errors. JSON files (by
    /// extension, or text starting with `{` or `[`) hold JSON values one after another;
    /// everything else is YAML, any number of documents.
    pub fn add_text(&mut self, path: &Path, text: &str) -> Result<(), ManifestError> {
        let trimmed = text.trim_start();
        let is_json = path.extension().and_then(|e| e.to_str()) == Some("json")
            || trimmed.starts_with('{')
            || trimmed.starts_with('[');
        if is_json {
            let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Document>();
            let mut document = 0;
            loop {
                document += 1;
                match stream.next() {
                    None => return Ok(()),
                    Some(Ok(read)) => self.add_document(path, document, read)?,
                    Some(Err(e)) => {
                        let location = format!(" (line {}, column {})", e.line(), e.column());
                        if is_nesting_limit(&e.to_string()) {
                            return Err(ManifestError::Limit {
                                path: path.to_path_buf(),
                                message: format!(
                                    "document {document}{location}: nested deeper than the JSON reader's limit of 128 levels"
                                ),
                            });
                        }
                        return Err(ManifestError::Syntax {
                            path: path.to_path_buf(),
                            document,
                            location,
                            format: "JSON",
                            message: e.to_string(),
                        });
                    }
                }
            }
        }
        let documents = serde_saphyr::from_str_multiple_with_options::<Document, Vec<Document>>(
            text,
            yaml_options(text.len()),
        )
        .map_err(|e| yaml_error(path, text, &e))?;
        for (index, read) in documents.into_iter().enumerate() {
            self.add_document(path, index + 1, read)?;
        }
        Ok(())
    }

    fn add_document(
        &mut self,
        path: &Path,
        document: usize,
        read: Document,
    ) -> Result<(), ManifestError> {
        let fail = |item: Option<usize>, message: String| ManifestError::Object {
            path: path.to_path_buf(),
            document,
            item: item.map(|i| format!(" item {i}")).unwrap_or_default(),
            message,
        };
        match read.0 {
            Read::List(items) => {
                for (index, item) in items.into_iter().enumerate() {
                    match item {
                        Ok(object) => self.add_object(object),
                        Err(message) => return Err(fail(Some(index + 1), message)),
                    }
                }
                Ok(())
            }
            Read::Object(object) => {
                self.add_object(object);
                Ok(())
            }
            Read::Skipped => Ok(()),
            Read::Invalid(message) => Err(fail(None, message)),
        }
    }

    fn add_object(&mut self, object: Object) {
        match object {
            Object::Claim(claim) => self.snapshot.add_claim(*claim),
            Object::Volume(volume) => self.snapshot.add_volume(*volume),
            Object::Class(class) => self.snapshot.add_class(*class),
            Object::Workload(workload) => self.workloads.push(*workload),
        }
    }

    /// The claims found, in namespace/name order.
    pub fn claims(&self) -> Vec<&PersistentVolumeClaim> {
        let mut claims: Vec<&PersistentVolumeClaim> =
            self.snapshot.claims().map(|c| c.as_ref()).collect();
        claims.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        claims
    }

    /// The volumes found, in name order.
    pub fn volumes(&self) -> Vec<&PersistentVolume> {
        let mut volumes: Vec<&PersistentVolume> =
            self.snapshot.volumes().map(|v| v.as_ref()).collect();
        volumes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        volumes
    }

    /// The pods as written (not the workloads' templates).
    pub fn pods(&self) -> impl Iterator<Item = &Workload> {
        self.workloads
            .iter()
            .filter(|w| w.kind == WorkloadKind::Pod)
    }
}

/// Reads at most `limits.max_input_bytes` (one more tells that the input is over the limit).
fn read_limited(
    path: &Path,
    input: &mut dyn io::Read,
    limits: ReadLimits,
) -> Result<String, ManifestError> {
    let mut bytes = Vec::new();
    io::Read::take(input, limits.max_input_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limits.max_input_bytes {
        return Err(ManifestError::Limit {
            path: path.to_path_buf(),
            message: format!(
                "the input is larger than {} (--max-input-mib); raise the limit to read it",
                Mib(limits.max_input_bytes)
            ),
        });
    }
    String::from_utf8(bytes).map_err(|e| ManifestError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text ({e})"),
        ),
    })
}

/// A size in MiB for messages.
struct Mib(u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = self.0 / (1024 * 1024);
        if mib * 1024 * 1024 == self.0 {
            write!(f, "{mib} MiB")
        } else {
            write!(f, "{} bytes", self.0)
        }
    }
}

/// The YAML reader's options. Its counting budgets (documents, nodes, events, scalar bytes) grow
/// with the input, so that no input is refused for its size alone: each document, node and
/// scalar byte takes at least one byte of input, each byte at most a few parser events. What
/// stays fixed are the limits against inputs that expand as they are read (aliases, nesting).
fn yaml_options(input_len: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    let room = input_len.saturating_add(1024);
    budget.max_documents = room;
    budget.max_nodes = room;
    budget.max_total_scalar_bytes = room;
    budget.max_events = room.saturating_mul(4);
    budget.max_reader_input_bytes = None;
    // Deeply nested CRD schemas exceed the default of 64.
    budget.max_depth = YAML_MAX_DEPTH;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    options
}

/// How deep YAML may nest.
const YAML_MAX_DEPTH: usize = 256;

/// The readers' guard against nesting that would exhaust the stack: a limit, not bad syntax.
fn is_nesting_limit(message: &str) -> bool {
    message.contains("recursion limit exceeded")
}

/// A YAML error, located by document and line; a budget breach is called a limit.
fn yaml_error(path: &Path, text: &str, error: &serde_saphyr::Error) -> ManifestError {
    let mut inner = error;
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    let located = error.location().filter(|l| l.line() > 0);
    let document = located.map_or(1, |l| document_at_line(text, l.line()));
    let location = located
        .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
        .unwrap_or_default();
    if is_nesting_limit(&error.to_string()) {
        return ManifestError::Limit {
            path: path.to_path_buf(),
            message: format!(
                "document {document}{location}: nested deeper than the YAML reader's limit of {YAML_MAX_DEPTH} levels"
            ),
        };
    }
    if let serde_saphyr::Error::Budget { breach, .. } = inner {
        return ManifestError::Limit {
            path: path.to_path_buf(),
            message: format!(
                "document {document}{location}: the YAML reader stops at {breach:?}, a limit \
                 against input that expands as it is read (aliases) or nests too deeply"
            ),
        };
    }
    ManifestError::Syntax {
        path: path.to_path_buf(),
        document,
        location,
        format: "YAML",
        message: first_line(&error.to_string()),
    }
}

/// One document as read: what it held, reduced to what is kept.
struct Document(Read);

/// What a document, or an item of a List, held.
enum Read {
    /// An object of a kind that is kept.
    Object(Object),
    /// A List: each item's object, or why it could not be read. Items of kinds not kept are left
    /// out.
    List(Vec<Result<Object, String>>),
    /// A kind that is not kept, or a null document.
    Skipped,
    /// Not a Kubernetes object, or an object that does not fit its kind.
    Invalid(String),
}

/// A kept object in its typed form (boxed: a List's items are collected before they are
/// added, and a `PersistentVolume` takes 3.5 KB inline).
enum Object {
    Claim(Box<PersistentVolumeClaim>),
    Volume(Box<PersistentVolume>),
    Class(Box<k8s_openapi::api::storage::v1::StorageClass>),
    Workload(Box<Workload>),
}

/// The kinds kept, besides the workloads.
const STORAGE_KINDS: [&str; 3] = ["PersistentVolumeClaim", "PersistentVolume", "StorageClass"];

fn is_kept(kind: &str) -> bool {
    STORAGE_KINDS.contains(&kind) || WorkloadKind::parse(kind).is_some()
}

fn is_list(kind: &str) -> bool {
    kind.ends_with("List")
}

/// The annotation `kubectl apply` writes: a second copy of the whole object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

impl<'de> de::Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(ObjectVisitor {
                top: true,
                item_kind: None,
            })
            .map(Document)
    }
}

/// Reads one object (a document, or an item of a List when `top` is false).
struct ObjectVisitor {
    /// A document: its `items` are read as a List's.
    top: bool,
    /// In a typed list (`PodList`), the kind of items that do not name one.
    item_kind: Option<String>,
}

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Read;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Read, E> {
        Ok(if self.top {
            Read::Skipped
        } else {
            Read::Invalid(NOT_AN_OBJECT.to_string())
        })
    }

    fn visit_none<E: de::Error>(self) -> Result<Read, E> {
        self.visit_unit()
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Read, E> {
        Ok(Read::Invalid(NOT_AN_OBJECT.to_string()))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Read, E> {
        Ok(Read::Invalid(NOT_AN_OBJECT.to_string()))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Read, E> {
        Ok(Read::Invalid(NOT_AN_OBJECT.to_string()))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Read, E> {
        Ok(Read::Invalid(NOT_AN_OBJECT.to_string()))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Read, E> {
        Ok(Read::Invalid(NOT_AN_OBJECT.to_string()))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Read, E> {
        Ok(Read::Invalid(NOT_AN_OBJECT.to_string()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Read, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Read::Invalid(NOT_AN_OBJECT.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Read, A::Error> {
        let mut kind: Option<String> = None;
        let mut fields = Map::new();
        // `Some(None)`: an `items` that is not an array.
        let mut items: Option<Option<Vec<Result<Object, String>>>> = None;
        while let Some(key) = map.next_key::<String>()? {
            let skip = kind.as_deref().is_some_and(|k| !is_kept(k) && !is_list(k));
            match key.as_str() {
                "kind" => {
                    let value: Value = map.next_value()?;
                    if let Value::String(k) = &value {
                        kind = Some(k.clone());
                    }
                    fields.insert(key, value);
                }
                "items" if self.top && kind.as_deref().is_none_or(is_list) => {
                    let item_kind = kind.as_deref().and_then(|k| {
                        k.strip_suffix("List")
                            .filter(|k| !k.is_empty())
                            .map(str::to_string)
                    });
                    items = Some(map.next_value_seed(ItemsSeed { item_kind })?);
                }
                // What kubectl adds and the decision never reads.
                "status" => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ if skip => {
                    map.next_value::<IgnoredAny>()?;
                }
                "metadata" => {
                    let value = map.next_value_seed(Pruned(Level::Metadata))?;
                    fields.insert(key, value);
                }
                _ => {
                    let value: Value = map.next_value()?;
                    fields.insert(key, value);
                }
            }
        }
        let kind = kind.or(self.item_kind);
        let Some(kind) = kind else {
            return Ok(Read::Invalid(NOT_AN_OBJECT.to_string()));
        };
        if is_list(&kind) && self.top {
            return Ok(match items {
                Some(Some(items)) => Read::List(items),
                // A kind that only ends with "List" and has no items is some other object.
                None if kind != "List" => Read::Skipped,
                _ => Read::Invalid(format!("{kind} without an items array")),
            });
        }
        if is_list(&kind) && (kind == "List" || fields.contains_key("items")) {
            // A List inside a List: rare enough to read as values.
            return Ok(match fields.remove("items") {
                Some(Value::Array(entries)) => {
                    let mut read = Vec::new();
                    for entry in entries {
                        match entry_object(entry) {
                            Ok(Some(object)) => read.push(Ok(object)),
                            Ok(None) => {}
                            Err(message) => read.push(Err(message)),
                        }
                    }
                    Read::List(read)
                }
                _ => Read::Invalid(format!("{kind} without an items array")),
            });
        }
        if !is_kept(&kind) {
            return Ok(Read::Skipped);
        }
        let value = Value::Object(fields);
        Ok(match typed(&kind, value) {
            Ok(object) => Read::Object(object),
            Err(message) => Read::Invalid(message),
        })
    }
}

const NOT_AN_OBJECT: &str = "not a Kubernetes object: it has no string field \"kind\"";

/// An item of a nested List, from its value.
fn entry_object(entry: Value) -> Result<Option<Object>, String> {
    let Some(kind) = entry
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Err(NOT_AN_OBJECT.to_string());
    };
    if !is_kept(&kind) {
        return Ok(None);
    }
    typed(&kind, entry).map(Some)
}

/// The typed object of a kept kind; the error names kind and name.
fn typed(kind: &str, value: Value) -> Result<Object, String> {
    let name = object_name(&value);
    let fail = |e: serde_json::Error| format!("{kind} {name}: {e}");
    fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
        serde_json::from_value(value)
    }
    let workload = |w: Workload| Object::Workload(Box::new(w));
    Ok(match kind {
        "PersistentVolumeClaim" => Object::Claim(decode(value).map_err(fail)?),
        "PersistentVolume" => Object::Volume(decode(value).map_err(fail)?),
        "StorageClass" => Object::Class(decode(value).map_err(fail)?),
        _ => match WorkloadKind::parse(kind) {
            Some(WorkloadKind::Pod) => {
                workload(Workload::of_pod(decode::<Pod>(value).map_err(fail)?))
            }
            Some(WorkloadKind::Deployment) => workload(Workload::of_deployment(
                decode::<Deployment>(value).map_err(fail)?,
            )),
            Some(WorkloadKind::StatefulSet) => workload(Workload::of_stateful_set(
                decode::<StatefulSet>(value).map_err(fail)?,
            )),
            Some(WorkloadKind::DaemonSet) => workload(Workload::of_daemon_set(
                decode::<DaemonSet>(value).map_err(fail)?,
            )),
            Some(WorkloadKind::ReplicaSet) => workload(Workload::of_replica_set(
                decode::<ReplicaSet>(value).map_err(fail)?,
            )),
            Some(WorkloadKind::ReplicationController) => {
                workload(Workload::of_replication_controller(
                    decode::<ReplicationController>(value).map_err(fail)?,
                ))
            }
            Some(WorkloadKind::Job) => {
                workload(Workload::of_job(decode::<Job>(value).map_err(fail)?))
            }
            Some(WorkloadKind::CronJob) => workload(Workload::of_cron_job(
                decode::<CronJob>(value).map_err(fail)?,
            )),
            Some(WorkloadKind::PodTemplate) => workload(Workload::of_pod_template(
                decode::<PodTemplate>(value).map_err(fail)?,
            )),
            None => unreachable!("typed() is called for kept kinds only"),
        },
    })
}

/// The items of a List, each turned into its object as soon as it is read; after the first
/// item that cannot be read the rest are skipped.
struct ItemsSeed {
    item_kind: Option<String>,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed {
    /// `None`: `items` is not an array.
    type Value = Option<Vec<Result<Object, String>>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed {
    type Value = Option<Vec<Result<Object, String>>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an items array")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        let mut failed = false;
        loop {
            if failed {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                continue;
            }
            let seed = ItemSeed(ObjectVisitor {
                top: false,
                item_kind: self.item_kind.clone(),
            });
            match seq.next_element_seed(seed)? {
                None => break,
                Some(Read::Object(object)) => items.push(Ok(object)),
                Some(Read::List(nested)) => items.extend(nested),
                Some(Read::Skipped) => {}
                Some(Read::Invalid(message)) => {
                    items.push(Err(message));
                    failed = true;
                }
            }
        }
        Ok(Some(items))
    }
}

struct ItemSeed(ObjectVisitor);

impl<'de> DeserializeSeed<'de> for ItemSeed {
    type Value = Read;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Read, D::Error> {
        deserializer.deserialize_any(self.0)
    }
}

/// Where a pruned value sits.
#[derive(Clone, Copy)]
enum Level {
    /// `metadata`: `managedFields` dropped.
    Metadata,
    /// `metadata.annotations`: the last-applied copy dropped.
    Annotations,
}

/// A value read without the parts the decision never reads.
struct Pruned(Level);

impl<'de> DeserializeSeed<'de> for Pruned {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pruned {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("object metadata")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match (self.0, key.as_str()) {
                (Level::Metadata, "managedFields") | (Level::Annotations, LAST_APPLIED) => {
                    map.next_value::<IgnoredAny>()?;
                }
                (Level::Metadata, "annotations") => {
                    let value = map.next_value_seed(Pruned(Level::Annotations))?;
                    fields.insert(key, value);
                }
                _ => {
                    let value: Value = map.next_value()?;
                    fields.insert(key, value);
                }
            }
        }
        Ok(Value::Object(fields))
    }

    // Anything but a map is kept as it is, for the typed decoder to judge.
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = seq.next_element::<Value>()? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }
}

/// `name`, else `generateName`, else `<unnamed>`.
fn object_name(value: &Value) -> String {
    let meta = value.get("metadata");
    meta.and_then(|m| m.get("name"))
        .or_else(|| meta.and_then(|m| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string()
}

fn collect_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_error)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .map_err(read_error)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            files.extend(collect_files(&entry)?);
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            files.push(entry);
        }
    }
    Ok(files)
}

/// The 1-based document a 1-based line falls in, counting `---` separators before it.
fn document_at_line(text: &str, line: u64) -> usize {
    let separators_before = text
        .lines()
        .take(line.saturating_sub(1) as usize)
        .enumerate()
        .filter(|(i, l)| l.starts_with("---") && (*i > 0 || !is_leading_separator(text)))
        .count();
    separators_before + 1
}

/// A file that starts with `---` does not open a second document with it.
fn is_leading_separator(text: &str) -> bool {
    text.lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .is_some_and(|l| l.starts_with("---"))
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, text: &str) -> Result<Manifests, ManifestError> {
        let mut m = Manifests::default();
        m.add_text(Path::new(name), text).map(|_| m)
    }

    #[test]
    fn multi_document_yaml_and_lists_are_read_and_other_kinds_ignored() {
        let m = load(
            "x.yaml",
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: PersistentVolumeClaim, metadata: {name: c1, namespace: a}, spec: {}}\n- {apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: []}}\n---\n",
        )
        .unwrap();
        assert_eq!(m.claims().len(), 1);
        assert_eq!(m.pods().count(), 1);
    }

    #[test]
    fn json_files_are_read() {
        let m = load(
            "x.json",
            r#"{"apiVersion":"v1","kind":"PersistentVolume","metadata":{"name":"pv1"},"spec":{}}"#,
        )
        .unwrap();
        assert_eq!(m.volumes().len(), 1);
    }

    #[test]
    fn json_values_one_after_another_are_read_as_documents() {
        let m = load(
            "x.json",
            r#"{"kind":"PersistentVolume","metadata":{"name":"a"}}
               {"kind":"PersistentVolume","metadata":{"name":"b"}}"#,
        )
        .unwrap();
        assert_eq!(m.volumes().len(), 2);
    }

    #[test]
    fn a_list_whose_items_come_before_its_kind_is_read_as_kubectl_prints_it() {
        // `kubectl get -o yaml` sorts keys: `items` before `kind: List`.
        let m = load(
            "x.yaml",
            "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: PersistentVolumeClaim\n  metadata: {name: c, namespace: ns}\n  spec: {}\n  status: {phase: Bound}\nkind: List\nmetadata: {resourceVersion: \"\"}\n",
        )
        .unwrap();
        assert_eq!(m.claims().len(), 1);
    }

    #[test]
    fn items_of_a_typed_list_take_its_kind_when_they_name_none() {
        // The API server's own lists (`PodList`) leave kind out of each item.
        let m = load(
            "x.json",
            r#"{"kind":"PodList","apiVersion":"v1","items":[{"metadata":{"name":"p","namespace":"n"},"spec":{"containers":[]}}]}"#,
        )
        .unwrap();
        assert_eq!(m.pods().count(), 1);
    }

    #[test]
    fn workloads_are_read_with_their_pod_template() {
        let m = load(
            "x.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      hostNetwork: true\n      containers: [{name: web, image: nginx}]\n",
        )
        .unwrap();
        let w = &m.workloads[0];
        assert_eq!(
            (w.kind, w.namespace.as_str(), w.name.as_str()),
            (WorkloadKind::Deployment, "shop", "web")
        );
        assert_eq!(w.pod.spec.as_ref().unwrap().host_network, Some(true));
    }

    #[test]
    fn status_managed_fields_and_the_last_applied_copy_are_not_kept() {
        let m = load(
            "x.yaml",
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: c\n  managedFields: [{manager: kubectl}]\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: '{}'\n    keep: me\nspec: {}\nstatus: {phase: Bound}\n",
        )
        .unwrap();
        let claim = m.claims()[0];
        assert!(claim.metadata.managed_fields.is_none());
        assert!(claim.status.is_none());
        let annotations = claim.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), vec!["keep"]);
    }

    #[test]
    fn malformed_yaml_names_file_document_and_line() {
        let err = load(
            "bad.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: [b\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("bad.yaml: document 2 (line "), "{err}");
        assert!(err.contains("malformed YAML"), "{err}");
    }

    #[test]
    fn a_document_with_the_wrong_shape_names_its_kind_and_name() {
        let err = load(
            "shape.yaml",
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec: {accessModes: ReadWriteOnce}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("shape.yaml: document 1: PersistentVolumeClaim data: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn a_document_without_kind_is_an_error() {
        let err = load("k.yaml", "a: 1\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "k.yaml: document 1: not a Kubernetes object: it has no string field \"kind\""
        );
    }

    #[test]
    fn a_bad_item_in_a_list_is_located_by_item() {
        let err = load("l.yaml", "kind: List\nitems:\n- kind: Pod\n  spec: 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("l.yaml: document 1 item 1: Pod <unnamed>:"),
            "{err}"
        );
    }

    #[test]
    fn many_documents_and_large_lists_are_not_refused_for_their_size() {
        let mut stream = String::new();
        for i in 0..3_000 {
            stream.push_str(&format!(
                "---\nkind: PersistentVolume\nmetadata: {{name: pv{i}}}\n"
            ));
        }
        assert_eq!(load("s.yaml", &stream).unwrap().volumes().len(), 3_000);
        let mut list = String::from("kind: List\nitems:\n");
        for i in 0..30_000 {
            list.push_str(&format!(
                "- kind: PersistentVolume\n  metadata: {{name: pv{i}, labels: {{a: b}}}}\n"
            ));
        }
        assert_eq!(load("l.yaml", &list).unwrap().volumes().len(), 30_000);
    }

    #[test]
    fn aliases_that_expand_are_stopped_by_a_limit_that_says_so() {
        // A "billion laughs": each level refers to the one before ten times.
        let mut text = String::from("kind: ConfigMap\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let err = load("bomb.yaml", &text).unwrap_err();
        assert!(
            matches!(err, ManifestError::Limit { .. }),
            "{err} ({err:?})"
        );
        assert!(
            err.to_string()
                .contains("over a safety limit, not malformed"),
            "{err}"
        );
    }

    #[rstest::rstest]
    #[case::yaml("deep.yaml", "YAML")]
    #[case::json("deep.json", "JSON")]
    fn nesting_past_the_readers_depth_is_refused_as_a_limit(
        #[case] name: &str,
        #[case] format: &str,
    ) {
        let nested = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
        let text = match format {
            "JSON" => format!("{{\"kind\": \"Pod\", \"spec\": {{\"x\": {nested}}}}}"),
            _ => format!("kind: Pod\nspec:\n  x: {nested}\n"),
        };
        let err = load(name, &text).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{name}: over a safety limit, not malformed: document 1 (line "
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!("the {format} reader's limit")),
            "{err}"
        );
    }

    #[test]
    fn input_over_the_size_limit_is_refused_as_a_limit() {
        let limits = ReadLimits {
            max_input_bytes: 10,
        };
        let err = read_limited(
            Path::new("big.yaml"),
            &mut "x".repeat(11).as_bytes(),
            limits,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "big.yaml: over a safety limit, not malformed: the input is larger than 10 bytes \
             (--max-input-mib); raise the limit to read it"
        );
    }

    #[test]
    fn standard_input_is_read_once() {
        let mut stdin: &[u8] = b"kind: PersistentVolume\nmetadata: {name: a}\n";
        let paths = vec![PathBuf::from(STDIN)];
        let m = Manifests::load_with(&paths, ReadLimits::default(), &mut stdin).unwrap();
        assert_eq!(m.volumes().len(), 1);
        let twice = vec![PathBuf::from(STDIN), PathBuf::from(STDIN)];
        let err = Manifests::load_with(&twice, ReadLimits::default(), &mut &b""[..]).unwrap_err();
        assert!(matches!(err, ManifestError::StdinTwice));
    }
}

#[cfg(test)]
mod never_panics {
    use super::*;
    use crate::capability::DriverTable;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Arbitrary text, and text built from YAML-ish fragments, yields objects or an error.
        #[test]
        fn arbitrary_input_never_panics(
            text in prop_oneof![
                any::<String>(),
                proptest::collection::vec(
                    proptest::sample::select(vec![
                        "kind: Pod\n", "kind: List\n", "items:\n", "- ", "spec:\n", "  volumes: ",
                        "[", "]", "{", "}", "---\n", "rules:\n", "driverRegex: '(('\n", "verdict: ",
                        "true\n", "null\n", "&a ", "*a\n", "!!binary ", "\"", ": ", "\t",
                        "kind: StatefulSet\n", "kind: PodList\n", "template:\n", "metadata:\n",
                        "  managedFields: ", "status: ", "volumeClaimTemplates:\n",
                    ]),
                    0..30,
                ).prop_map(|parts| parts.concat()),
            ]
        ) {
            let mut manifests = Manifests::default();
            let _ = manifests.add_text(Path::new("fuzz.yaml"), &text);
            let _ = manifests.add_text(Path::new("fuzz.json"), &text);
            let _ = DriverTable::from_operator_yaml(&text, "fuzz");
        }
    }
}
