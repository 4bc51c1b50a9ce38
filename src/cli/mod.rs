//! Command-line interface.

pub mod explain;

use clap::{Parser, Subcommand};

/// Labels PVCs/PVs with their idmap-mount support and enables user namespaces on pods where safe.
#[derive(Debug, Parser)]
#[command(name = "userns-labeler", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate manifests offline: each claim's and volume's label, and each pod's decision.
    Explain(explain::ExplainArgs),
}
