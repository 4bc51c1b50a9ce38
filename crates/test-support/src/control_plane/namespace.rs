//! A fresh namespace per test, and the servers' logs printed when a test fails.

use std::{
    fmt::Write as _,
    fs,
    io::{BufReader, Read, Seek, SeekFrom},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use super::{ControlPlane, block_on};
use crate::env_nonempty;

/// Label put on every namespace made by [`ControlPlane::namespace`].
pub const TEST_NAMESPACE_LABEL: &str = "userns-labeler.test/created-by";

impl ControlPlane {
    /// Creates a uniquely named namespace `<prefix>-<n>-<random>`. The returned
    /// guard prints the servers' logs if the test panics.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let suffix = format!(
            "{}-{:x}",
            COUNTER.fetch_add(1, Ordering::Relaxed),
            (nanos ^ std::process::id().rotate_left(16)) & 0xffffff
        );
        let mut base = sanitize(prefix);
        base.truncate(63 - suffix.len() - 1);
        let name = format!("{}-{suffix}", base.trim_end_matches('-'));
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [(
                        TEST_NAMESPACE_LABEL.to_owned(),
                        "userns-labeler-tests".to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        TestNamespace {
            name,
            logs: self.logs_on_failure(),
        }
    }

    /// A guard that prints the last log lines of both servers when dropped
    /// during a panic (i.e. when the test fails).
    pub fn logs_on_failure(&self) -> FailureLogs {
        FailureLogs { cp: self.clone() }
    }

    /// The last `lines` lines of each server's log, with headers.
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(local) = &self.inner.local else {
            return "(external cluster: no server logs)\n".into();
        };
        let mut out = String::new();
        if let Ok(why) = fs::read_to_string(self.dir().join("server-exited")) {
            writeln!(out, "!!! {}", why.trim()).unwrap();
        }
        for (name, path) in [
            ("supervisor", &local.supervisor_log),
            ("etcd", &local.etcd_log),
            ("kube-apiserver", &local.apiserver_log),
        ] {
            let n = if name == "kube-apiserver" {
                lines
            } else {
                lines / 3
            };
            writeln!(out, "----- last {n} lines of {} -----", path.display()).unwrap();
            out.push_str(&tail(path, n));
        }
        writeln!(
            out,
            "----- (set USERNS_TEST_KEEP=1 to keep {} after the test run) -----",
            self.dir().display()
        )
        .unwrap();
        out
    }
}

/// How many log lines a failed test prints: `USERNS_TEST_LOG_LINES`, else 60.
pub(super) fn log_lines() -> usize {
    env_nonempty("USERNS_TEST_LOG_LINES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// The last `lines` lines of a file (reads at most the last 256 KiB).
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("({} not readable)\n", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    let _ = file.seek(SeekFrom::Start(start));
    let mut text = String::new();
    let _ = BufReader::new(file).read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

/// Makes a string usable inside a DNS label.
pub(super) fn sanitize(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out = out.trim_matches('-').to_owned();
    if out.is_empty() { "test".into() } else { out }
}

/// Prints the servers' logs when dropped while the thread panics.
pub struct FailureLogs {
    cp: ControlPlane,
}

impl Drop for FailureLogs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== control plane logs (kubernetes {} at {}) =====\n{}",
                self.cp.version(),
                self.cp.server_url(),
                self.cp.log_tail(log_lines())
            );
        }
    }
}

/// A namespace made for one test; see [`ControlPlane::namespace`]. On an
/// external cluster it is deleted again when the test passes (locally there
/// is no namespace controller, so it stays).
pub struct TestNamespace {
    name: String,
    logs: FailureLogs,
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let cp = &self.logs.cp;
        if cp.is_external() && !std::thread::panicking() {
            let name = self.name.clone();
            let cp = cp.clone();
            block_on(async move {
                let api = Api::<Namespace>::all(cp.client().await);
                if let Err(e) = api.delete(&name, &DeleteParams::background()).await {
                    eprintln!("deleting test namespace {name}: {e}");
                }
            });
        }
    }
}
