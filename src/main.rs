use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use userns_labeler::cli::{Cli, Command, explain};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Explain(args) => match explain::run(&args) {
            Ok(output) => {
                // A closed stdout (e.g. `| head`) is not an error worth a panic.
                let _ = std::io::stdout().write_all(output.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
