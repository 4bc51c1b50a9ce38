//! A real single-node cluster (etcd, kube-apiserver, controller-manager, scheduler,
//! containerd + runc, kubelet, kube-proxy) for tests whose pods must really run.
//!
//! The cluster is `tests/node/cluster.sh run`, the same script behind `make cluster`: it starts
//! every component, prints `READY <kubeconfig> <kubectl>`, and tears everything down (processes,
//! mounts, cgroups, the bridge, kube-proxy's table, host paths) when its stdin reaches EOF — when
//! the test process ends for any reason, the pipe closes. A lock in the script keeps two
//! clusters from running at once: a second test binary waits for the first one's teardown.
//!
//! ```ignore
//! use userns_labeler_test_support::node;
//!
//! let cluster = node::shared();            // one cluster per test binary
//! let client = cluster.client().await;     // admin kube::Client
//! cluster.restart("kube-apiserver");       // stop and start one component
//! ```
//!
//! Without root or kernel support the cluster does not start and [`shared`] panics with the
//! script's reason (`cluster.sh preflight`): real-node tests fail, never skip.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use kube::Client;

use crate::{control_plane::client_from_kubeconfig, repo_root};

pub mod pods;

/// How long to wait for `READY` (includes waiting for another run's cluster to go away).
const START_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// A running single-node cluster. Dropping it stops the cluster and cleans up.
pub struct Cluster {
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    started_in: Duration,
    stdin: Mutex<Option<ChildStdin>>,
    child: Mutex<Child>,
}

/// The script behind the cluster.
pub fn script() -> PathBuf {
    repo_root().join("tests/node/cluster.sh")
}

/// The cluster's state directory (`USERNS_NODE_DIR`, default `/var/lib/userns-labeler-node`):
/// the kubelet's root directory and every path a fixture may mount lie below it.
pub fn state_dir() -> PathBuf {
    crate::env_nonempty("USERNS_NODE_DIR").map_or_else(
        || PathBuf::from("/var/lib/userns-labeler-node"),
        PathBuf::from,
    )
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster shared by all tests of this test binary, started on first use. Panics with the
/// reason when it cannot start (for example: not root, a kernel without idmapped mounts).
pub fn shared() -> &'static Cluster {
    match SHARED.get_or_init(Cluster::start) {
        Ok(cluster) => cluster,
        Err(message) => panic!("{message}"),
    }
}

impl Cluster {
    /// Starts a cluster: runs the script's preflight, then `cluster.sh run`, and waits for
    /// `READY`. The error carries the script's reason and its last log lines.
    pub fn start() -> Result<Cluster, String> {
        crate::control_plane::install_crypto_provider();
        let preflight = Command::new("bash")
            .arg(script())
            .arg("preflight")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
        if !preflight.status.success() {
            return Err(format!(
                "the real-node tests need a machine that can run a kubelet with user namespaces: {}",
                String::from_utf8_lossy(&preflight.stderr).trim()
            ));
        }
        let log = std::env::temp_dir().join(format!("userns-node-{}.log", std::process::id()));
        let log_file =
            fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let started = Instant::now();
        let mut child = Command::new("bash")
            .arg(script())
            .arg("run")
            .env("USERNS_NODE_LOG", &log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            // Own process group: a Ctrl-C reaches the test process only; the script then sees
            // EOF and tears down in order.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", script().display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("READY ") {
                    let _ = tx.send(line);
                    return;
                }
            }
        });
        let tail = |log: &Path| {
            let text = fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        let ready = loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(line) => break line,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!(
                            "the real-node cluster did not start ({status}); {}:\n{}",
                            log.display(),
                            tail(&log)
                        ));
                    }
                    if started.elapsed() > START_TIMEOUT {
                        drop(stdin);
                        let _ = child.wait();
                        return Err(format!(
                            "the real-node cluster was not ready after {START_TIMEOUT:?}; {}:\n{}",
                            log.display(),
                            tail(&log)
                        ));
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    return Err(format!(
                        "the real-node cluster did not start ({status:?}); {}:\n{}",
                        log.display(),
                        tail(&log)
                    ));
                }
            }
        };
        let mut fields = ready.split_whitespace().skip(1);
        let kubeconfig = PathBuf::from(fields.next().unwrap_or_default());
        let kubectl = PathBuf::from(fields.next().unwrap_or_default());
        let started_in = started.elapsed();
        eprintln!(
            "real node: ready in {:.1}s (kubeconfig {}, script log {})",
            started_in.as_secs_f64(),
            kubeconfig.display(),
            log.display()
        );
        Ok(Cluster {
            kubeconfig,
            kubectl,
            state_dir: state_dir(),
            log,
            started_in,
            stdin: Mutex::new(stdin),
            child: Mutex::new(child),
        })
    }

    /// An admin (`system:masters`) kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// How long the cluster took to become ready (including waiting for the lock).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The state directory (see [`state_dir`]).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The script's log (component starts, teardown).
    pub fn script_log(&self) -> &Path {
        &self.log
    }

    /// A component's log file (`kubelet`, `containerd`, `kube-apiserver`, ...).
    pub fn component_log(&self, component: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{component}.log"))
    }

    /// An admin client. Call it inside the test's tokio runtime.
    pub async fn client(&self) -> Client {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// A `kubectl` command against this cluster.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Runs `cluster.sh <args>` (e.g. `install`, `restart kube-apiserver`) and panics with its
    /// output when it fails.
    pub fn script(&self, args: &[&str]) {
        let output = Command::new("bash")
            .arg(script())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run cluster.sh: {e}"));
        assert!(
            output.status.success(),
            "cluster.sh {} failed ({}):\n{}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops one component (`kube-apiserver`, `kubelet`, `containerd`, ...) and starts it again;
    /// for the API server, waits until it is ready.
    pub fn restart(&self, component: &str) {
        self.script(&["restart", component]);
    }

    /// `ctr` against the node's containerd, in the `k8s.io` namespace.
    pub fn ctr(&self) -> Command {
        let output = Command::new(repo_root().join("tests/node/build.sh"))
            .args(["path", "ctr"])
            .output()
            .expect("tests/node/build.sh path ctr");
        let ctr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let mut cmd = Command::new(ctr);
        cmd.arg("--address")
            .arg(self.state_dir.join("containerd/containerd.sock"))
            .args(["-n", "k8s.io"]);
        cmd
    }

    /// The host pid of a running container, from its `containerd://<id>` status id.
    pub fn container_pid(&self, container_id: &str) -> Option<u32> {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let output = self.ctr().args(["tasks", "ls"]).output().ok()?;
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                Some((fields.next()?, fields.next()?))
            })
            .find(|(task, _)| *task == id)
            .and_then(|(_, pid)| pid.parse().ok())
    }
}

impl Cluster {
    /// Stops the cluster (EOF on the script's stdin) and waits for its teardown.
    pub fn stop(self) {
        drop(self);
    }

    /// The script's supervisor process (`cluster.sh run`).
    pub fn supervisor_pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// The pid of a running component (`kubelet`, `containerd`, ...), from its pid file.
    pub fn component_pid(&self, component: &str) -> Option<u32> {
        fs::read_to_string(self.state_dir.join("pids").join(component))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// The host paths outside the state directory that the kubelet, containerd and CNI use
/// whatever they are told (`cluster.sh` removes those it created).
pub const HOST_PATHS: [&str; 6] = [
    "/var/lib/kubelet",
    "/run/containerd",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/nri",
];

/// Everything a cluster may leave behind, described: processes whose command line names the
/// state directory, processes in `kubepods` cgroups, mounts under the state directory, the
/// `kubepods` cgroups, the bridge, kube-proxy's nftables table, the state directory, and those of
/// [`HOST_PATHS`] that are not in `existed_before`. Empty when nothing is left.
pub fn leftovers(existed_before: &[&str]) -> Vec<String> {
    let dir = state_dir();
    let dir_str = dir.display().to_string();
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            // A zombie has exited and holds nothing but its pid until its parent (after a
            // crash: the machine's init, which may reap late or never) collects it.
            if process_state(pid) == Some('Z') {
                continue;
            }
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if cmdline.contains(&dir_str) || cgroup.contains("/kubepods") {
                found.push(format!("process {pid}: {}", cmdline.trim()));
            }
        }
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        if let Some(target) = line.split(' ').nth(4)
            && (target == dir_str || target.starts_with(&format!("{dir_str}/")))
        {
            found.push(format!("mount {target}"));
        }
    }
    if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let kubepods = h.path().join("kubepods");
            if kubepods.exists() {
                found.push(format!("cgroup {}", kubepods.display()));
            }
        }
    }
    if Path::new("/sys/class/net/usernsbr0").exists() {
        found.push("bridge usernsbr0".into());
    }
    let nft = Command::new("nft")
        .args(["list", "table", "ip", "kube-proxy"])
        .output();
    if nft.is_ok_and(|o| o.status.success()) {
        found.push("nftables table ip kube-proxy".into());
    }
    if dir.exists() {
        found.push(format!("state directory {dir_str}"));
    }
    for path in HOST_PATHS {
        if !existed_before.contains(&path) && Path::new(path).exists() {
            found.push(format!("host path {path}"));
        }
    }
    found
}

/// The state letter of `/proc/<pid>/stat` (after the parenthesised command name, which may
/// itself contain spaces and parentheses).
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // EOF on the script's stdin: it tears everything down, then exits.
        drop(self.stdin.lock().unwrap().take());
        let _ = self.child.lock().unwrap().wait();
    }
}
