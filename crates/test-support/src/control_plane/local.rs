//! The local control plane's processes: etcd and kube-apiserver under a bash
//! supervisor, started in a temporary directory, stopped in order.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use rcgen::KeyPair;

use super::{
    Binaries, Builder, ControlPlane, Inner, block_on,
    certificates::{Ca, kubeconfig_yaml},
    k8s_version,
    namespace::log_lines,
    write_file,
};
use crate::{env_nonempty, free_port};

/// How long kube-apiserver and etcd get between `SIGTERM` and `SIGKILL`.
const STOP_GRACE_SECS: u32 = 5;
/// How long to wait for `/readyz` and the `default` namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Quotes a string for bash.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Why a local control plane did not start.
pub(super) struct StartFailure {
    /// The reason, with the servers' last log lines.
    pub(super) message: String,
    /// A port was taken between choosing and binding it: worth another try.
    pub(super) port_clash: bool,
}

/// Files and processes of a local control plane. Dropping it stops the servers.
pub(super) struct Local {
    /// Our end of the supervisor's stdin: closing it stops everything.
    supervisor_stdin: Mutex<Option<ChildStdin>>,
    supervisor: Mutex<Child>,
    pub(super) etcd_url: String,
    pub(super) etcd_log: PathBuf,
    pub(super) apiserver_log: PathBuf,
    pub(super) supervisor_log: PathBuf,
    pub(super) audit_log: Option<PathBuf>,
    pub(super) kubectl: PathBuf,
}

impl Local {
    pub(super) fn start(bins: &Binaries, opts: &Builder) -> Result<ControlPlane, StartFailure> {
        let keep = env_nonempty("USERNS_TEST_KEEP").is_some_and(|v| v != "0");
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .expect("creating a temporary directory")
            .keep();
        if keep {
            write_file(&dir.join("keep"), "USERNS_TEST_KEEP was set\n");
        }
        let path = |name: &str| dir.join(name);
        let started = Instant::now();
        let version = k8s_version();

        let (etcd_client_port, etcd_peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_client_port}");
        let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
        let server = format!("https://127.0.0.1:{api_port}");

        let ca = Ca::new();
        write_file(&path("ca.crt"), &ca.cert_pem);
        let serving = ca.server_cert(&["127.0.0.1", "localhost"]);
        write_file(&path("apiserver.crt"), &serving.cert_pem);
        write_file(&path("apiserver.key"), &serving.key_pem);
        let admin = ca.client_cert("admin", &["system:masters"]);
        write_file(&path("admin.crt"), &admin.cert_pem);
        write_file(&path("admin.key"), &admin.key_pem);
        let sa_key = KeyPair::generate().expect("service account key");
        write_file(&path("sa.key"), &sa_key.serialize_pem());
        write_file(&path("sa.pub"), &sa_key.public_key_pem());
        let kubeconfig = path("kubeconfig");
        write_file(
            &kubeconfig,
            &kubeconfig_yaml(
                &server,
                &path("ca.crt"),
                &path("admin.crt"),
                &path("admin.key"),
                "admin",
            ),
        );

        let mut etcd_cmd: Vec<String> = vec![
            bins.etcd.display().to_string(),
            "--name=default".into(),
            format!("--data-dir={}", path("etcd-data").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={etcd_peer}"),
            format!("--initial-advertise-peer-urls={etcd_peer}"),
            format!("--initial-cluster=default={etcd_peer}"),
            "--unsafe-no-fsync=true".into(),
        ];
        etcd_cmd.extend(opts.etcd_args.iter().cloned());

        let mut api_cmd: Vec<String> = vec![
            bins.kube_apiserver.display().to_string(),
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", path("apiserver-certs").display()),
            format!("--tls-cert-file={}", path("apiserver.crt").display()),
            format!("--tls-private-key-file={}", path("apiserver.key").display()),
            format!("--client-ca-file={}", path("ca.crt").display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={server}/"),
            format!("--service-account-key-file={}", path("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                path("sa.key").display()
            ),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--profiling=false".into(),
        ];
        if needs_userns_gate(&version) {
            api_cmd.push("--feature-gates=UserNamespacesSupport=true".into());
        }
        let audit_log = opts.audit_policy.as_ref().map(|policy| {
            write_file(&path("audit-policy.yaml"), policy);
            api_cmd.push(format!(
                "--audit-policy-file={}",
                path("audit-policy.yaml").display()
            ));
            api_cmd.push(format!("--audit-log-path={}", path("audit.log").display()));
            api_cmd.push("--audit-log-format=json".into());
            api_cmd.push("--audit-log-mode=blocking".into());
            path("audit.log")
        });
        api_cmd.extend(opts.apiserver_args.iter().cloned());

        let script = supervisor_script(&etcd_cmd, &api_cmd);
        write_file(&path("supervise.sh"), &script);
        let supervisor_log = path("supervisor.log");
        let log_file = fs::File::create(&supervisor_log).expect("supervisor log");
        let mut child = Command::new("bash")
            .arg(path("supervise.sh"))
            .arg(&dir)
            .arg(STOP_GRACE_SECS.to_string())
            .arg(if keep { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            // Own process group: a Ctrl-C on the terminal reaches only the test
            // process; the supervisor then stops the servers in order.
            .process_group(0)
            .spawn()
            .expect("starting the control plane supervisor (bash)");
        let stdin = child.stdin.take();

        let local = Local {
            supervisor_stdin: Mutex::new(stdin),
            supervisor: Mutex::new(child),
            etcd_url,
            etcd_log: path("etcd.log"),
            apiserver_log: path("kube-apiserver.log"),
            supervisor_log,
            audit_log,
            kubectl: bins.kubectl.clone(),
        };
        let cp = ControlPlane {
            inner: Arc::new(Inner {
                server,
                kubeconfig,
                dir,
                ca,
                version: version.clone(),
                local: Some(local),
                user_counter: AtomicU64::new(0),
                _cleanup: Mutex::new(None),
            }),
        };

        match block_on(wait_ready(&cp)) {
            Ok(()) => {
                eprintln!(
                    "control plane: kubernetes {version} ready at {} in {:.1}s (dir {})",
                    cp.server_url(),
                    started.elapsed().as_secs_f64(),
                    cp.dir().display()
                );
                Ok(cp)
            }
            Err(reason) => {
                let logs = cp.log_tail(log_lines());
                let port_clash = logs.contains("address already in use");
                let message = format!(
                    "the local control plane (kubernetes {version}) did not become ready: {reason}\n{logs}"
                );
                drop(cp); // stops whatever runs and removes the directory
                Err(StartFailure {
                    message,
                    port_clash,
                })
            }
        }
    }
}

/// Prefix of the local control planes' temporary directories.
const DIR_PREFIX: &str = "userns-cp-";

/// Removes temporary directories of earlier runs whose supervisor is gone
/// without having cleaned up (it was killed itself, e.g. by a job runner that
/// kills every process a command left behind). Directories of running
/// supervisors, and those kept with `USERNS_TEST_KEEP`, are left alone.
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry.file_name().to_string_lossy().starts_with(DIR_PREFIX);
        if !is_ours || path.join("keep").exists() {
            continue;
        }
        // Written by the supervisor once it runs; without it the directory
        // may belong to a control plane that is starting right now.
        let Ok(pid) = fs::read_to_string(path.join("supervisor.pid")) else {
            continue;
        };
        // The pid is ours only if that process still runs our script on this
        // directory (pids are reused).
        let alive = fs::read(format!("/proc/{}/cmdline", pid.trim()))
            .map(|cmdline| {
                let needle = path.as_os_str().as_encoded_bytes();
                cmdline.windows(needle.len()).any(|w| w == needle)
            })
            .unwrap_or(false);
        if !alive {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// `UserNamespacesSupport` is on by default from 1.33 (and locked from 1.36):
/// pass the gate only to older API servers, which otherwise drop `hostUsers`.
fn needs_userns_gate(version: &str) -> bool {
    let minor = version
        .strip_prefix("v1.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    matches!(minor, Some(m) if m <= 32)
}

/// The supervisor: starts both servers, then waits for EOF on its stdin (the
/// test process went away or dropped the control plane) or for a server to
/// exit, and stops kube-apiserver before etcd.
fn supervisor_script(etcd_cmd: &[String], api_cmd: &[String]) -> String {
    let quote = |cmd: &[String]| {
        cmd.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        r#"#!/usr/bin/env bash
# Generated by crates/test-support/src/control_plane/local.rs. Arguments: <dir> <grace seconds> <keep 0|1>.
set -u
dir=$1 grace=$2 keep=$3
sleeper=
etcd_cmd=({etcd})
api_cmd=({api})

exec 3<&0 </dev/null
"${{etcd_cmd[@]}}" >"$dir/etcd.log" 2>&1 3<&- &
etcd=$!
"${{api_cmd[@]}}" >"$dir/kube-apiserver.log" 2>&1 3<&- &
api=$!
echo "$$" >"$dir/supervisor.pid"
echo "supervisor $$: etcd pid $etcd, kube-apiserver pid $api"

alive() {{
    local _pid _comm state
    read -r _pid _comm state _ 2>/dev/null <"/proc/$1/stat" || return 1
    [[ $state != Z ]]
}}

stop() {{ # <pid> <name>
    local i
    kill -TERM "$1" 2>/dev/null || return 0
    for ((i = 0; i < grace * 10; i++)); do
        alive "$1" || break
        sleep 0.1
    done
    if alive "$1"; then
        echo "$2 still running ${{grace}}s after SIGTERM: SIGKILL"
        kill -KILL "$1" 2>/dev/null
    fi
    wait "$1" 2>/dev/null
    echo "$2 stopped"
}}

stop_all() {{
    stop "$api" kube-apiserver
    stop "$etcd" etcd
}}

on_eof() {{
    trap '' TERM INT HUP
    echo "stop requested"
    stop_all
    [[ -z $sleeper ]] || kill "$sleeper" 2>/dev/null
    [[ $keep == 1 ]] || rm -rf "$dir"
    exit 0
}}
trap on_eof TERM INT HUP

# Our stdin is a pipe from the test process: EOF means it has gone away.
( read -r -u 3 _; kill -TERM $$ ) &
exec 3<&-

wait -n "$etcd" "$api"
status=$?
if ! alive "$api"; then who=kube-apiserver; else who=etcd; fi
echo "$who exited on its own (status $status)" | tee "$dir/server-exited"
stop_all
# Keep the logs for the test process until it goes away.
while :; do
    sleep 3600 &
    sleeper=$!
    wait "$sleeper"
done
"#,
        etcd = quote(etcd_cmd),
        api = quote(api_cmd),
    )
}

async fn wait_ready(cp: &ControlPlane) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let exited = cp.dir().join("server-exited");
    let client = cp.client().await;
    let mut last_error = String::from("no answer yet");
    let mut readyz_ok = false;
    while Instant::now() < deadline {
        if let Ok(why) = fs::read_to_string(&exited) {
            return Err(why.trim().to_owned());
        }
        if let Some(local) = &cp.inner.local
            && let Ok(Some(status)) = local.supervisor.lock().unwrap().try_wait()
        {
            return Err(format!("the supervisor exited ({status})"));
        }
        if !readyz_ok {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => readyz_ok = true,
                Ok(body) => last_error = format!("/readyz: {body}"),
                Err(e) => last_error = format!("/readyz: {e}"),
            }
        }
        if readyz_ok {
            match Api::<Namespace>::all(client.clone())
                .get_opt("default")
                .await
            {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => last_error = "namespace default does not exist yet".into(),
                Err(e) => last_error = format!("get namespace default: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "timed out after {READY_TIMEOUT:?}; last: {last_error}"
    ))
}

impl Drop for Local {
    fn drop(&mut self) {
        // Closing the pipe tells the supervisor to stop both servers.
        drop(self.supervisor_stdin.lock().unwrap().take());
        let mut child = self.supervisor.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(u64::from(STOP_GRACE_SECS) * 2 + 5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    // A supervisor stuck after a server exited on its own: it
                    // already stopped both servers.
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}
