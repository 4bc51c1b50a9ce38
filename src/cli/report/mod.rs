//! `userns-labeler report`: a live cluster's readiness for user namespaces, read-only.
//!
//! `model.rs` is the pure part (listed objects in, report out), `fetch.rs` the list calls,
//! `table.rs` and `html.rs` the renderings; this file holds the flags and the run.

pub mod fetch;
pub mod html;
pub mod model;
pub mod table;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::cli::explain::{ExplainError, load_table};
use crate::keys::{self, Keys};
use model::{Scope, TableInForce};

const REPORT_HELP: &str = "\
Reads the cluster with get and list calls only (no watch, no write): pods, claims, volumes,
classes, nodes, the workload kinds, and the labeler's driver ConfigMap and its last good copy
(deploy/report/rbac.yaml grants exactly that). Every workload is judged from its own template,
as the webhook in enforce mode would judge its next pod; bare pods from their spec (with a
hostUsers: false this webhook set taken back).

Output (-o table, the default): the one-line summary; BLOCKERS (each blocker by the workloads
it holds back; claim and volume blockers per storage driver); WORKLOADS (NAMESPACE, WORKLOAD,
PODS with their current decision annotations, DECISION enabled/skipped, BLOCKERS one per
line); NAMESPACES; CLAIMS by label value and the drivers behind false/unknown; NODES by
user-namespace support. -o json: the same as one object (the README documents every key).
-o html: one self-contained page (no external assets) with charts, to attach to a ticket.

Exit status: 0 done; 2 bad usage or input (flags, --drivers file, label prefix); 3 the cluster
cannot be reached, or a list call is refused (the message names the resource).";

#[derive(Debug, Args)]
#[command(after_long_help = REPORT_HELP)]
pub struct ReportArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// The kubeconfig cluster to use.
    #[arg(long)]
    pub cluster: Option<String>,
    /// The kubeconfig user to use.
    #[arg(long)]
    pub user: Option<String>,
    /// Report on this namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Report on all namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,
    /// Judge with this driver table instead of the cluster's (the `drivers.yaml` format, or a
    /// ConfigMap manifest), e.g. to see what an edit would change.
    #[arg(long, value_name = "FILE")]
    pub drivers: Option<PathBuf>,
    /// The namespace of the labeler's driver ConfigMap.
    #[arg(long, default_value = "userns-labeler")]
    pub labeler_namespace: String,
    /// The labeler's driver ConfigMap (its last good copy is `<name>-last-good`).
    #[arg(long, default_value = "userns-labeler-drivers")]
    pub config_map: String,
    /// Domain prefix of the labels and annotations.
    #[arg(long, env = "USERNS_LABEL_PREFIX", default_value = keys::DEFAULT_PREFIX)]
    pub label_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Html,
}

/// Why `report` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Drivers(#[from] ExplainError),
    #[error(transparent)]
    Prefix(#[from] keys::InvalidPrefix),
    #[error("loading the kubeconfig: {0}")]
    Config(String),
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
}

impl ReportError {
    /// 2 for bad usage or input, 3 when the cluster cannot be read.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReportError::Drivers(_) | ReportError::Prefix(_) => 2,
            ReportError::Config(_) | ReportError::Fetch(_) => 3,
        }
    }
}

/// The client and the default namespace, the way kubectl finds them.
async fn client(args: &ReportArgs) -> Result<(Client, String), ReportError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        cluster: args.cluster.clone(),
        user: args.user.clone(),
    };
    let config_error = |e: &dyn std::fmt::Display| ReportError::Config(e.to_string());
    let explicit = options.context.is_some() || options.cluster.is_some() || options.user.is_some();
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| ReportError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| config_error(&e))?
        }
        None if explicit => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| config_error(&e))?,
        None => kube::Config::infer().await.map_err(|e| config_error(&e))?,
    };
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| config_error(&e))?;
    Ok((client, namespace))
}

/// Runs the report and returns what to print on stdout.
pub async fn run(args: &ReportArgs) -> Result<String, ReportError> {
    let keys = Keys::new(&args.label_prefix)?;
    let file_table = match &args.drivers {
        Some(path) => Some(TableInForce::Table {
            table: Arc::new(load_table(path)?),
            source: format!("file {}", path.display()),
        }),
        None => None,
    };
    let (client, default_namespace) = client(args).await?;
    let scope = if args.all_namespaces {
        Scope::All
    } else {
        Scope::Namespace(args.namespace.clone().unwrap_or(default_namespace))
    };
    let table = match file_table {
        Some(table) => table,
        None => {
            fetch::table_in_force(
                &client,
                &args.labeler_namespace,
                &args.config_map,
                keys.prefix(),
            )
            .await?
        }
    };
    let objects = fetch::list_objects(&client, &scope, &keys).await?;
    let report = model::build(objects, &scope, &table, &keys);
    Ok(match args.output {
        ReportFormat::Table => table::render(&report),
        ReportFormat::Json => {
            let mut text = serde_json::to_string_pretty(&report).expect("the report serialises");
            text.push('\n');
            text
        }
        ReportFormat::Html => html::render(&report),
    })
}
