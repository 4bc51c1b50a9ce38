//! Prints a generated cluster (`crates/test-support/src/generate.rs`) the way kubectl or helm
//! print manifests, for measuring `explain` on real-size input:
//!
//! ```sh
//! cargo run --release --example generate-manifests -- list-yaml 6667 > list.yaml   # 20,001 objects
//! cargo run --release --example generate-manifests -- list-json 6667 > list.json
//! cargo run --release --example generate-manifests -- stream-yaml 1667 > stream.yaml  # 5,001 documents
//! /usr/bin/time -v target/release/userns-labeler explain -f list.yaml > /dev/null
//! ```
//!
//! `FORMAT` is `list-yaml` or `list-json` (`kubectl get pv,pvc,pods -A -o yaml|json`: a
//! `kind: List` of full objects, with `managedFields` and `status`) or `stream-yaml` (one
//! document per object, as `helm template` prints them). `N` pods, each with its claim and the
//! volume it is bound to: `3 × N` objects. `--create` leaves out what the API server sets
//! (and the volumes), for applying them to a cluster.

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use userns_labeler_test_support::generate::{
    Shape, objects, write_list_json, write_list_yaml, write_stream_yaml,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let create = args.iter().any(|a| a == "--create");
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let (Some(format), Some(count)) = (positional.first(), positional.get(1)) else {
        eprintln!("usage: generate-manifests list-yaml|list-json|stream-yaml N [--create]");
        return ExitCode::from(2);
    };
    let Ok(count) = count.parse::<usize>() else {
        eprintln!("N must be a number, not {count:?}");
        return ExitCode::from(2);
    };
    let shape = if create { Shape::Create } else { Shape::Full };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let objects = objects(count, shape);
    let written = match format.as_str() {
        "list-yaml" => write_list_yaml(&mut out, objects),
        "list-json" => write_list_json(&mut out, objects),
        "stream-yaml" => write_stream_yaml(&mut out, objects),
        other => {
            eprintln!("unknown format {other:?}: list-yaml, list-json or stream-yaml");
            return ExitCode::from(2);
        }
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("writing: {e}");
            ExitCode::FAILURE
        }
    }
}
