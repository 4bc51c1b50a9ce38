//! Command-line interface.

pub mod explain;

use clap::{Parser, Subcommand};

use crate::runtime::RunArgs;
use crate::telemetry::LogFormat;

/// Labels PVCs/PVs with their idmap-mount support and enables user namespaces on pods where safe.
#[derive(Debug, Parser)]
#[command(name = "userns-labeler", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "USERNS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate manifests offline: each claim's and volume's label, and each pod's decision.
    Explain(explain::ExplainArgs),
    /// Run the controller, the webhook and the admin server against a cluster.
    Run(Box<RunArgs>),
}
