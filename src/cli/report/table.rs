//! The report as text: the summary, then one table per section.

use super::model::{ClusterReport, WorkloadEntry};
use crate::capability::WorkloadKind;
use crate::cli::explain::blocker_lines;
use crate::cli::output::columns;

/// `deployment/web`, or `Kind/name` for owners that are not workload kinds.
pub fn workload_reference(w: &WorkloadEntry) -> String {
    match WorkloadKind::parse(&w.kind) {
        Some(kind) => format!("{}/{}", kind.resource(), w.name),
        None => format!("{}/{}", w.kind, w.name),
    }
}

/// `3`, or `3 (audit 2, none 1)`: the pods and their decision annotations.
pub fn pods_cell(w: &WorkloadEntry) -> String {
    if w.pods == 0 {
        return "0".to_string();
    }
    let decisions: Vec<String> = w
        .pod_decisions
        .iter()
        .map(|(value, n)| format!("{value} {n}"))
        .collect();
    format!("{} ({})", w.pods, decisions.join(", "))
}

pub fn render(report: &ClusterReport) -> String {
    let mut out = format!(
        "Scope: {}. Driver table: {}.\n\n{}\n",
        report.scope, report.driver_table, report.summary.text
    );

    if !report.blockers.is_empty() {
        let rows: Vec<Vec<String>> = report
            .blockers
            .iter()
            .map(|b| vec![b.workloads.to_string(), b.label.clone(), b.example.clone()])
            .collect();
        out.push_str("\nBLOCKERS (by the workloads they hold back)\n");
        out.push_str(&columns(&["WORKLOADS", "BLOCKER", "EXAMPLE"], &rows));
    }

    if !report.workloads.is_empty() {
        let rows: Vec<Vec<String>> = report
            .workloads
            .iter()
            .map(|w| {
                vec![
                    w.namespace.clone(),
                    workload_reference(w),
                    pods_cell(w),
                    w.decision.to_string(),
                    blocker_lines(&w.reasons),
                ]
            })
            .collect();
        out.push_str("\nWORKLOADS\n");
        out.push_str(&columns(
            &["NAMESPACE", "WORKLOAD", "PODS", "DECISION", "BLOCKERS"],
            &rows,
        ));

        let rows: Vec<Vec<String>> = report
            .namespaces
            .iter()
            .map(|n| {
                vec![
                    n.namespace.clone(),
                    n.workloads.to_string(),
                    n.can_run.to_string(),
                    (n.workloads - n.can_run).to_string(),
                ]
            })
            .collect();
        out.push_str("\nNAMESPACES\n");
        out.push_str(&columns(
            &["NAMESPACE", "WORKLOADS", "CAN RUN", "BLOCKED"],
            &rows,
        ));
    }

    let claims = &report.claims;
    out.push_str(&format!(
        "\nCLAIMS: {} ({} true, {} false, {} unknown; {} already labelled so)\n",
        claims.total,
        claims.by_label.get("true").copied().unwrap_or(0),
        claims.by_label.get("false").copied().unwrap_or(0),
        claims.by_label.get("unknown").copied().unwrap_or(0),
        claims.labelled,
    ));
    if !claims.drivers.is_empty() {
        let rows: Vec<Vec<String>> = claims
            .drivers
            .iter()
            .map(|d| {
                vec![
                    d.label.to_string(),
                    d.claims.to_string(),
                    d.driver.clone().unwrap_or_else(|| "-".to_string()),
                    d.reason.clone(),
                ]
            })
            .collect();
        out.push_str(&columns(&["LABEL", "CLAIMS", "DRIVER", "REASON"], &rows));
    }

    let nodes = &report.nodes;
    if nodes.listed && nodes.total == 0 {
        out.push_str("\nNODES: none\n");
    } else if nodes.listed {
        out.push_str(&format!(
            "\nNODES: {} ({} supported, {} unsupported, {} unknown)\n",
            nodes.total,
            nodes.by_support.get("supported").copied().unwrap_or(0),
            nodes.by_support.get("unsupported").copied().unwrap_or(0),
            nodes.by_support.get("unknown").copied().unwrap_or(0),
        ));
        if !nodes.nodes.is_empty() {
            let rows: Vec<Vec<String>> = nodes
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.support.to_string(),
                        n.kernel.clone(),
                        n.runtime.clone(),
                        n.reason.clone(),
                    ]
                })
                .collect();
            out.push_str(&columns(
                &["NODE", "USERNS", "KERNEL", "RUNTIME", "WHY"],
                &rows,
            ));
        }
    } else {
        out.push_str("\nNODES: not listed (forbidden)\n");
    }
    out
}
