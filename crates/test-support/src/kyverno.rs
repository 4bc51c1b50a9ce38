//! Kyverno's real admission server, run out of cluster against the test control plane by
//! `scripts/kyverno-server.sh` (CRDs applied server-side, namespace and ConfigMaps, the server
//! with `--serverIP=127.0.0.1:<port>`, its webhook configurations registered and pointing at
//! it). The script runs under a pipe on its standard input: dropping [`KyvernoServer`], or the
//! test process ending however it ends, closes the pipe, and the script stops the server and
//! deletes Kyverno's webhook configurations. A missing tool or a server that does not become
//! ready fails the test with the reason, never skips it.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::{control_plane::ControlPlane, repo_root, tool};

/// How long the script may take to apply the CRDs and see the webhooks registered.
const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// A running Kyverno admission server; stopped and its webhooks removed on drop.
pub struct KyvernoServer {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    dir: tempfile::TempDir,
}

impl KyvernoServer {
    /// Starts the server against `cp` and waits until its webhooks are registered. Needs the
    /// local control plane's kubectl; builds the server on first use (`make tools`).
    pub fn start(cp: &ControlPlane) -> KyvernoServer {
        // Build (or find) the binary and the CRDs first, outside the readiness timeout.
        tool("kyverno-server");
        tool("crds");
        let dir = tempfile::Builder::new()
            .prefix("kyverno-server.")
            .tempdir()
            .expect("a temporary directory for the Kyverno server");
        let script = repo_root().join("scripts/kyverno-server.sh");
        let mut child = Command::new(&script)
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .arg("--kubectl")
            .arg(cp.kubectl_path())
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let port = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line
                .strip_prefix("ready ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or_else(|| {
                    panic!("kyverno-server.sh printed {line:?}, not `ready <port> <pid>`")
                }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "Kyverno's admission server was not ready within {READY_TIMEOUT:?} (script status {status:?}); its log:\n{}",
                    tail(&dir.path().join("kyverno.log"), 40)
                );
            }
        };
        KyvernoServer {
            child,
            stdin,
            port,
            dir,
        }
    }

    /// The port its webhooks are called on (`https://127.0.0.1:<port>`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory with `kyverno.log` and `setup.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of the server's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("kyverno.log"), lines)
    }

    /// Where the server's log is.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("kyverno.log")
    }
}

impl Drop for KyvernoServer {
    fn drop(&mut self) {
        // EOF on the script's stdin: it stops the server and deletes the webhook configurations.
        drop(self.stdin.take());
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
