//! Command-line interface.

pub mod explain;
pub mod output;
pub mod report;

use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::runtime::RunArgs;
use crate::telemetry::LogFormat;

/// The binary's name as a kubectl plugin: `kubectl userns …` runs `kubectl-userns …`.
pub const KUBECTL_PLUGIN: &str = "kubectl-userns";

const EXIT_CODES: &str = "\
Exit status: 0 done; 2 bad input or usage; 3 (report) the cluster cannot be reached, or a read
is refused. `run` exits non-zero when it cannot start or a component fails.";

/// Labels PVCs/PVs with their idmap-mount support and enables user namespaces on pods where safe.
#[derive(Debug, Parser)]
#[command(name = "userns-labeler", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "USERNS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate manifests offline: each claim's and volume's label, and the decision for each
    /// pod and workload (Deployment, StatefulSet, …).
    Explain(explain::ExplainArgs),
    /// Report on a live cluster, read-only: which workloads can run with user namespaces, what
    /// blocks the others, claims by label, nodes by support.
    Report(report::ReportArgs),
    /// Run the controller, the webhook and the admin server against a cluster.
    Run(Box<RunArgs>),
}

impl Cli {
    /// Parses `args` (the first is the program): as `userns-labeler`, or, when the program is
    /// named `kubectl-userns` (a symlink or a copy on `PATH`), as the plugin `kubectl userns`,
    /// so that help and errors show the command the user typed. Exits on `--help`, `--version`
    /// and usage errors (status 2), as clap does.
    pub fn parse_as<I, T>(args: I) -> Cli
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let program = args
            .first()
            .and_then(|p| Path::new(p).file_name())
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let mut command = Cli::command();
        if program.starts_with(KUBECTL_PLUGIN) {
            command = command.name("kubectl userns").bin_name("kubectl userns");
        }
        let matches = command.get_matches_from(args);
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}
