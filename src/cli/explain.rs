//! `userns-labeler explain`: the engine applied to manifests on disk or on standard input,
//! without a cluster.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::capability::pod::pod_namespace;
use crate::capability::{
    DriverTable, PodDecision, TableError, VolumeVerdict, WorkloadKind, decide_workload,
    resolve_claim, resolve_volume,
};
use crate::cli::output::columns;
use crate::keys::{self, Keys, decision};
use crate::manifests::{DEFAULT_MAX_INPUT_MIB, ManifestError, Manifests, ReadLimits};

/// The columns and exit codes, for `explain --help`.
const EXPLAIN_HELP: &str = "\
Output (-o table, the default): two tables.
  Volumes: NAMESPACE (- for PersistentVolumes), VOLUME (pvc/NAME, pv/NAME, or
  claimtemplate/NAME (statefulset/OWNER) for a StatefulSet's volumeClaimTemplates, judged as
  the claims it will create), IDMAP (the label the controller would write: true, false,
  unknown), DRIVER, REASON.
  Pods and workloads: NAMESPACE, WORKLOAD (pod/NAME, deployment/NAME, statefulset/NAME, …;
  a workload is judged through its pod template), DECISION (what the webhook in enforce mode
  does with the pod: enabled = sets spec.hostUsers: false, skipped = leaves it as written),
  BLOCKERS (each blocker on its own line: CODE: sentence; - when nothing blocks).
  A last line counts the decisions.
-o json: {\"volumes\": [...], \"pods\": [...]}; the README documents every key.

Exit status: 0 done; 2 bad input or usage (unreadable or malformed manifests, an invalid
driver table or label prefix, an input over --max-input-mib), with the file, document and line
on stderr.";

#[derive(Debug, Args)]
#[command(after_long_help = EXPLAIN_HELP)]
pub struct ExplainArgs {
    /// Manifest files or directories (YAML, multi-document, `kind: List`, or JSON); `-` reads
    /// standard input (`helm template … | userns-labeler explain -f -`). Repeatable.
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
    /// The largest file or standard input read, in MiB: a safety limit, not a format limit.
    #[arg(long, value_name = "MIB", env = "USERNS_MAX_INPUT_MIB", default_value_t = DEFAULT_MAX_INPUT_MIB)]
    pub max_input_mib: u64,
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
    /// `PersistentVolumeClaim`, `PersistentVolume` or `PersistentVolumeClaimTemplate`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// A claim template's StatefulSet: `StatefulSet/<name>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub label: &'static str,
    pub driver: Option<String>,
    pub reason: String,
    /// Where the driver was read from.
    pub driver_source: Option<String>,
}

/// The decision for a pod, or for the pods a workload creates.
#[derive(Debug, Serialize)]
pub struct PodReport {
    /// The manifest's kind: `Pod`, `Deployment`, `StatefulSet`, …
    pub kind: &'static str,
    pub namespace: String,
    /// The pod's or the workload's name.
    pub name: String,
    /// `enabled` or `skipped`, as the webhook's decision annotation says in enforce mode.
    pub decision: &'static str,
    /// Whether the webhook would set `spec.hostUsers: false`.
    pub mutate: bool,
    pub reasons: Vec<ReasonReport>,
}

#[derive(Debug, Serialize)]
pub struct ReasonReport {
    pub code: &'static str,
    pub message: String,
    /// The storage driver behind a claim or volume blocker, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

impl ReasonReport {
    pub fn of_decision(decision: PodDecision) -> Vec<ReasonReport> {
        decision
            .blockers
            .into_iter()
            .map(|b| ReasonReport {
                code: b.code.as_str(),
                message: b.message,
                driver: b.driver,
            })
            .collect()
    }
}

/// Runs the command and returns what to print on stdout.
pub fn run(args: &ExplainArgs) -> Result<String, ExplainError> {
    let keys = Keys::new(&args.label_prefix)?;
    let table = match &args.drivers {
        Some(path) => Arc::new(load_table(path)?),
        None => DriverTable::defaults(),
    };
    let limits = ReadLimits {
        max_input_bytes: args.max_input_mib.saturating_mul(1024 * 1024),
    };
    let manifests = Manifests::load_with(&args.files, limits, &mut std::io::stdin().lock())?;
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
pub fn load_table(path: &Path) -> Result<DriverTable, ExplainError> {
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

fn volume_report(
    kind: &'static str,
    namespace: Option<String>,
    name: String,
    owner: Option<String>,
    v: VolumeVerdict,
) -> VolumeReport {
    VolumeReport {
        kind,
        namespace,
        name,
        owner,
        label: v.verdict.as_str(),
        driver: v.driver,
        reason: v.reason,
        driver_source: v.driver_source.map(|s| s.to_string()),
    }
}

/// Applies the engine to every claim, volume, claim template, pod and workload of the manifests.
pub fn build_report(manifests: &Manifests, table: &DriverTable, keys: &Keys) -> Report {
    let view = &manifests.snapshot;
    let mut volumes: Vec<VolumeReport> = manifests
        .claims()
        .into_iter()
        .map(|claim| {
            volume_report(
                "PersistentVolumeClaim",
                Some(pod_namespace(&claim.metadata).to_string()),
                claim.metadata.name.clone().unwrap_or_default(),
                None,
                resolve_claim(claim, view, table, keys),
            )
        })
        .collect();
    let mut templates: Vec<VolumeReport> = manifests
        .workloads
        .iter()
        .flat_map(|w| w.claim_templates.iter().map(move |t| (w, t)))
        .map(|(workload, template)| {
            volume_report(
                "PersistentVolumeClaimTemplate",
                Some(workload.namespace.clone()),
                template.metadata.name.clone().unwrap_or_default(),
                Some(format!("StatefulSet/{}", workload.name)),
                resolve_claim(template, view, table, keys),
            )
        })
        .collect();
    templates
        .sort_by(|a, b| (&a.namespace, &a.owner, &a.name).cmp(&(&b.namespace, &b.owner, &b.name)));
    volumes.extend(templates);
    volumes.extend(manifests.volumes().into_iter().map(|volume| {
        volume_report(
            "PersistentVolume",
            None,
            volume.metadata.name.clone().unwrap_or_default(),
            None,
            resolve_volume(volume, view, table, keys),
        )
    }));
    let mut pods: Vec<PodReport> = manifests
        .workloads
        .iter()
        .map(|workload| {
            let decided = decide_workload(workload, view, table, keys);
            let mutate = decided.mutate();
            PodReport {
                kind: workload.kind.as_str(),
                namespace: workload.namespace.clone(),
                name: workload.name.clone(),
                decision: decision::of(mutate),
                mutate,
                reasons: ReasonReport::of_decision(decided),
            }
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name, a.kind).cmp(&(&b.namespace, &b.name, b.kind)));
    Report { volumes, pods }
}

/// A kubectl-like table: volumes first, then pods and workloads, then a count of decisions.
pub fn render_table(report: &Report) -> String {
    let volume_rows: Vec<Vec<String>> = report
        .volumes
        .iter()
        .map(|v| {
            let volume = match (v.kind, &v.owner) {
                ("PersistentVolume", _) => format!("pv/{}", v.name),
                (_, Some(owner)) => {
                    let (kind, name) = owner.split_once('/').unwrap_or(("", owner));
                    format!(
                        "claimtemplate/{} ({}/{name})",
                        v.name,
                        kind.to_ascii_lowercase()
                    )
                }
                _ => format!("pvc/{}", v.name),
            };
            vec![
                v.namespace.clone().unwrap_or_else(|| "-".to_string()),
                volume,
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
            let kind = WorkloadKind::parse(p.kind).map_or("pod", WorkloadKind::resource);
            vec![
                p.namespace.clone(),
                format!("{kind}/{}", p.name),
                p.decision.to_string(),
                blocker_lines(&p.reasons),
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
            &["NAMESPACE", "WORKLOAD", "DECISION", "BLOCKERS"],
            &pod_rows,
        ));
        let enabled = report.pods.iter().filter(|p| p.mutate).count();
        let (noun, verb) = match report.pods.len() {
            1 => ("pod or workload", "is"),
            _ => ("pods and workloads", "are"),
        };
        out.push_str(&format!(
            "\n{enabled} of {} {noun} {verb} {}, {} {}.\n",
            report.pods.len(),
            decision::ENABLED,
            report.pods.len() - enabled,
            decision::SKIPPED,
        ));
    }
    if out.is_empty() {
        out.push_str("No claims, volumes, pods or workloads found.\n");
    }
    out
}

/// Each blocker on its own line, `Code: sentence`; `-` when nothing blocks.
pub fn blocker_lines(reasons: &[ReasonReport]) -> String {
    if reasons.is_empty() {
        return "-".to_string();
    }
    reasons
        .iter()
        .map(|r| format!("{}: {}", r.code, r.message))
        .collect::<Vec<_>>()
        .join("\n")
}
