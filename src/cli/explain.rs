//! `userns-labeler explain`: the engine applied to manifests on disk, without a cluster.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::capability::pod::pod_namespace;
use crate::capability::{DriverTable, TableError, decide_pod, resolve_claim, resolve_volume};
use crate::keys::{self, Keys};
use crate::manifests::{ManifestError, Manifests};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Manifest files or directories (YAML, multi-document, `kind: List`, or JSON). Repeatable.
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// A driver table in the ConfigMap's `drivers.yaml` format (or a ConfigMap manifest holding
    /// one): its rules go before the built-in ones unless it sets `replaceDefaults: true`.
    #[arg(long, value_name = "FILE", env = "USERNS_DRIVERS_FILE")]
    pub drivers: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Domain prefix of the labels and annotations.
    #[arg(long, env = "USERNS_LABEL_PREFIX", default_value = keys::DEFAULT_PREFIX)]
    pub label_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Why `explain` could not run. All of these exit with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("{path}: cannot read the driver table: {source}")]
    ReadTable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    TableManifest { path: PathBuf, message: String },
    #[error(transparent)]
    Prefix(#[from] keys::InvalidPrefix),
}

/// The `-o json` report. Keys may be added; none are renamed.
#[derive(Debug, Serialize)]
pub struct Report {
    pub volumes: Vec<VolumeReport>,
    pub pods: Vec<PodReport>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeReport {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub label: &'static str,
    pub driver: Option<String>,
    pub reason: String,
    /// Where the driver was read from.
    pub driver_source: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub mutate: bool,
    pub reasons: Vec<ReasonReport>,
}

#[derive(Debug, Serialize)]
pub struct ReasonReport {
    pub code: &'static str,
    pub message: String,
}

/// Runs the command and returns what to print on stdout.
pub fn run(args: &ExplainArgs) -> Result<String, ExplainError> {
    let keys = Keys::new(&args.label_prefix)?;
    let table = match &args.drivers {
        Some(path) => Arc::new(load_table(path)?),
        None => DriverTable::defaults(),
    };
    let manifests = Manifests::load(&args.files)?;
    let report = build_report(&manifests, &table, &keys);
    Ok(match args.output {
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(&report).expect("report serialises");
            text.push('\n');
            text
        }
        OutputFormat::Table => render_table(&report),
    })
}

/// Reads a `--drivers` file: a table document, or a ConfigMap manifest with a `drivers.yaml` key.
fn load_table(path: &Path) -> Result<DriverTable, ExplainError> {
    let text = fs::read_to_string(path).map_err(|source| ExplainError::ReadTable {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = path.display().to_string();
    let probe: Option<serde_json::Value> = serde_saphyr::from_str(&text).ok();
    let is_config_map = probe
        .as_ref()
        .and_then(|v| v.get("kind"))
        .and_then(|k| k.as_str())
        == Some("ConfigMap");
    if !is_config_map {
        return Ok(DriverTable::from_operator_yaml(&text, &origin)?);
    }
    let inner = probe
        .as_ref()
        .and_then(|v| v.get("data"))
        .and_then(|d| d.get(crate::config::CONFIG_MAP_KEY))
        .and_then(|t| t.as_str())
        .ok_or_else(|| ExplainError::TableManifest {
            path: path.to_path_buf(),
            message: format!(
                "the ConfigMap has no data key {:?}",
                crate::config::CONFIG_MAP_KEY
            ),
        })?;
    Ok(DriverTable::from_operator_yaml(
        inner,
        &format!("{origin} (data.{})", crate::config::CONFIG_MAP_KEY),
    )?)
}

/// Applies the engine to every claim, volume and pod of the manifests.
pub fn build_report(manifests: &Manifests, table: &DriverTable, keys: &Keys) -> Report {
    let view = &manifests.snapshot;
    let mut volumes: Vec<VolumeReport> = manifests
        .claims()
        .into_iter()
        .map(|claim| {
            let v = resolve_claim(claim, view, table, keys);
            VolumeReport {
                kind: "PersistentVolumeClaim",
                namespace: Some(pod_namespace(&claim.metadata).to_string()),
                name: claim.metadata.name.clone().unwrap_or_default(),
                label: v.verdict.as_str(),
                driver: v.driver,
                reason: v.reason,
                driver_source: v.driver_source.map(|s| s.to_string()),
            }
        })
        .collect();
    volumes.extend(manifests.volumes().into_iter().map(|volume| {
        let v = resolve_volume(volume, view, table, keys);
        VolumeReport {
            kind: "PersistentVolume",
            namespace: None,
            name: volume.metadata.name.clone().unwrap_or_default(),
            label: v.verdict.as_str(),
            driver: v.driver,
            reason: v.reason,
            driver_source: v.driver_source.map(|s| s.to_string()),
        }
    }));
    let mut pods: Vec<PodReport> = manifests
        .pods
        .iter()
        .map(|pod| {
            let namespace = pod_namespace(&pod.metadata);
            let decision = decide_pod(pod, namespace, view, table, keys);
            PodReport {
                namespace: namespace.to_string(),
                name: pod
                    .metadata
                    .name
                    .clone()
                    .or_else(|| pod.metadata.generate_name.clone())
                    .unwrap_or_else(|| "<unnamed>".to_string()),
                mutate: decision.mutate(),
                reasons: decision
                    .blockers
                    .into_iter()
                    .map(|b| ReasonReport {
                        code: b.code.as_str(),
                        message: b.message,
                    })
                    .collect(),
            }
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Report { volumes, pods }
}

/// A kubectl-like table: volumes first, then pods.
pub fn render_table(report: &Report) -> String {
    let volume_rows: Vec<Vec<String>> = report
        .volumes
        .iter()
        .map(|v| {
            let kind = if v.kind == "PersistentVolume" {
                "pv"
            } else {
                "pvc"
            };
            vec![
                v.namespace.clone().unwrap_or_else(|| "-".to_string()),
                format!("{kind}/{}", v.name),
                v.label.to_string(),
                v.driver.clone().unwrap_or_else(|| "-".to_string()),
                v.reason.clone(),
            ]
        })
        .collect();
    let pod_rows: Vec<Vec<String>> = report
        .pods
        .iter()
        .map(|p| {
            let (decision, reason) = if p.mutate {
                ("enable", "-".to_string())
            } else {
                let codes: Vec<&str> = p.reasons.iter().map(|r| r.code).collect();
                ("skip", codes.join(","))
            };
            vec![
                p.namespace.clone(),
                p.name.clone(),
                decision.to_string(),
                reason,
            ]
        })
        .collect();
    let mut out = String::new();
    if !volume_rows.is_empty() {
        out.push_str(&columns(
            &["NAMESPACE", "VOLUME", "IDMAP", "DRIVER", "REASON"],
            &volume_rows,
        ));
    }
    if !pod_rows.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&columns(
            &["NAMESPACE", "POD", "HOSTUSERS", "BLOCKERS"],
            &pod_rows,
        ));
    }
    if out.is_empty() {
        out.push_str("No claims, volumes or pods found.\n");
    }
    out
}

/// Left-aligned columns separated by three spaces; the last column is not padded.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len() - 1;
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}   ", width = widths[i]);
            }
        }
        out.push('\n');
    }
    out
}
