//! The operator's driver table (`DriverTable::from_operator_yaml`, which the controller's
//! ConfigMap and `explain --drivers` both go through) on arbitrary text: a table or an error, never a panic. A table
//! that parses is then asked about every claim, volume and pod of `examples/` (the
//! `explain` report), so its patterns and parameter conditions run too.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use userns_labeler::capability::{AccessMode, DriverTable, VolumeMode};
use userns_labeler::cli::explain::{build_report, render_table};
use userns_labeler::keys::Keys;
use userns_labeler::manifests::Manifests;

static EXAMPLES: LazyLock<Manifests> = LazyLock::new(|| {
    let mut manifests = Manifests::default();
    for (name, text) in userns_labeler_fuzz::EXAMPLES
        .iter()
        .chain(userns_labeler_fuzz::EXAMPLE_PODS)
    {
        manifests
            .add_text(Path::new(name), text)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    manifests
});

fn exercise(table: &DriverTable) {
    let keys = Keys::default();
    let report = build_report(&EXAMPLES, table, &keys);
    render_table(&report);
    let parameters = BTreeMap::from([
        ("nfsOptions".to_string(), "vers=4".to_string()),
        ("migratable".to_string(), "true".to_string()),
        ("fsType".to_string(), "xfs".to_string()),
    ]);
    for driver in ["driver.longhorn.io", "nfs.csi.k8s.io", "", "x.example.com"] {
        table.evaluate(
            driver,
            &[AccessMode::ReadWriteOnce, AccessMode::ReadWriteMany],
            VolumeMode::Filesystem,
            Some("ext4"),
            &parameters,
        );
        table.evaluate(driver, &[], VolumeMode::Block, None, &BTreeMap::new());
    }
    for rule in table.rules() {
        rule.driver_display();
    }
}

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    match DriverTable::from_operator_yaml(&text, "fuzz") {
        Ok(table) => exercise(&table),
        Err(error) => {
            error.to_string();
        }
    }
});
