use std::io::Write;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use userns_labeler::cli::{Cli, Command, explain, report};
use userns_labeler::{runtime, telemetry};

/// Prints a command's output; a closed stdout (e.g. `| head`) is not an error worth a panic.
fn print(output: &str) -> ExitCode {
    let _ = std::io::stdout().write_all(output.as_bytes());
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    // Installed as `kubectl-userns`, the binary is the kubectl plugin `kubectl userns`.
    let cli = Cli::parse_as(std::env::args_os());
    match cli.command {
        Command::Explain(args) => match explain::run(&args) {
            Ok(output) => print(&output),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Report(args) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(report::run(&args)) {
                Ok(output) => print(&output),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Run(args) => {
            telemetry::init(cli.log_format);
            // One TLS crypto provider for the whole process (kube client and webhook server).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                match runtime::run(*args, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = %e, "exiting");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// SIGTERM or SIGINT starts a graceful shutdown.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
