//! The manifest reader of `explain` (`Manifests::add_text`) on arbitrary text, read as YAML and
//! as JSON: objects or an error naming file and document, never a panic. What it reads is then
//! reported as `explain` does (the engine on every claim, volume and pod; table and JSON).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use userns_labeler::cli::explain::{build_report, render_table};
use userns_labeler::keys::Keys;
use userns_labeler::manifests::Manifests;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let table = userns_labeler_fuzz::defaults();
    let keys = Keys::default();
    for name in ["fuzz.yaml", "fuzz.json"] {
        let mut manifests = Manifests::default();
        match manifests.add_text(Path::new(name), &text) {
            Ok(()) => {
                let report = build_report(&manifests, &table, &keys);
                render_table(&report);
                serde_json::to_string(&report).expect("the report serialises");
            }
            Err(error) => {
                error.to_string();
            }
        }
    }
});
