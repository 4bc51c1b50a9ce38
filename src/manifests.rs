//! Reading Kubernetes manifests from files and directories: YAML (multi-document) or JSON,
//! `kind: List` expanded, kinds the engine does not use ignored. Errors name the file and the
//! document.

use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use serde_json::Value;

use crate::capability::Snapshot;

/// The objects found in a set of manifests.
#[derive(Debug, Default)]
pub struct Manifests {
    pub snapshot: Snapshot,
    pub pods: Vec<Pod>,
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
    #[error("{path}: no YAML or JSON files found")]
    Empty { path: PathBuf },
}

impl Manifests {
    /// Loads every file (directories recursively, `*.yaml`, `*.yml`, `*.json`, in name order).
    pub fn load(paths: &[PathBuf]) -> Result<Manifests, ManifestError> {
        let mut manifests = Manifests::default();
        for path in paths {
            let files = collect_files(path)?;
            if files.is_empty() {
                return Err(ManifestError::Empty { path: path.clone() });
            }
            for file in files {
                let text = fs::read_to_string(&file).map_err(|source| ManifestError::Read {
                    path: file.clone(),
                    source,
                })?;
                manifests.add_text(&file, &text)?;
            }
        }
        Ok(manifests)
    }

    /// Adds the objects of one file's text; `path` names it in errors.
    pub fn add_text(&mut self, path: &Path, text: &str) -> Result<(), ManifestError> {
        for (index, document) in parse_documents(path, text)?.into_iter().enumerate() {
            self.add_value(path, index + 1, None, document)?;
        }
        Ok(())
    }

    fn add_value(
        &mut self,
        path: &Path,
        document: usize,
        item: Option<usize>,
        value: Value,
    ) -> Result<(), ManifestError> {
        let fail = |message: String| ManifestError::Object {
            path: path.to_path_buf(),
            document,
            item: item.map(|i| format!(" item {i}")).unwrap_or_default(),
            message,
        };
        if value.is_null() {
            return Ok(());
        }
        let Some(kind) = value.get("kind").and_then(Value::as_str) else {
            return Err(fail(
                "not a Kubernetes object: it has no string field \"kind\"".to_string(),
            ));
        };
        let kind = kind.to_string();
        if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
            let Some(Value::Array(items)) = value.get("items").cloned() else {
                return Err(fail(format!("{kind} without an items array")));
            };
            for (i, entry) in items.into_iter().enumerate() {
                self.add_value(path, document, Some(i + 1), entry)?;
            }
            return Ok(());
        }
        let name = object_name(&value);
        let decode_error = |e: serde_json::Error| fail(format!("{kind} {name}: {e}"));
        match kind.as_str() {
            "PersistentVolumeClaim" => self
                .snapshot
                .add_claim(serde_json::from_value(value).map_err(decode_error)?),
            "PersistentVolume" => self
                .snapshot
                .add_volume(serde_json::from_value(value).map_err(decode_error)?),
            "StorageClass" => self
                .snapshot
                .add_class(serde_json::from_value(value).map_err(decode_error)?),
            "Pod" => self
                .pods
                .push(serde_json::from_value(value).map_err(decode_error)?),
            _ => {}
        }
        Ok(())
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

/// Splits a file into documents. JSON files (by extension, or text starting with `{` or `[`)
/// hold one document; everything else is multi-document YAML.
fn parse_documents(path: &Path, text: &str) -> Result<Vec<Value>, ManifestError> {
    let trimmed = text.trim_start();
    let is_json = path.extension().and_then(|e| e.to_str()) == Some("json")
        || trimmed.starts_with('{')
        || trimmed.starts_with('[');
    if is_json {
        return serde_json::from_str::<Value>(text)
            .map(|v| vec![v])
            .map_err(|e| ManifestError::Syntax {
                path: path.to_path_buf(),
                document: 1,
                location: format!(" (line {}, column {})", e.line(), e.column()),
                format: "JSON",
                message: e.to_string(),
            });
    }
    serde_saphyr::from_multiple::<Value>(text).map_err(|e| {
        let (document, location) = match e.location() {
            Some(loc) => (
                document_at_line(text, loc.line()),
                format!(" (line {}, column {})", loc.line(), loc.column()),
            ),
            None => (1, String::new()),
        };
        ManifestError::Syntax {
            path: path.to_path_buf(),
            document,
            location,
            format: "YAML",
            message: first_line(&e.to_string()),
        }
    })
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
        assert_eq!(m.pods.len(), 1);
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
