//! The local control plane of the integration tests (etcd and kube-apiserver on loopback, from
//! the binaries `make control-plane` builds), for `make demo` (`scripts/demo.sh`).
//!
//! `demo-control-plane ENV_FILE` starts it, picks two free loopback ports for the demo's
//! webhook and admin servers, writes `KUBECONFIG=`, `KUBECTL=`, `SERVER=`, `WEBHOOK_PORT=` and
//! `ADMIN_PORT=` lines to ENV_FILE once the API server is ready, and runs until SIGINT or
//! SIGTERM. However this process ends, the harness' supervisor then stops kube-apiserver and
//! etcd and removes their temporary directory.

use std::process::ExitCode;

use userns_labeler_test_support::{control_plane, free_port};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(env_file) = std::env::args().nth(1) else {
        eprintln!("usage: demo-control-plane ENV_FILE");
        return ExitCode::from(2);
    };
    if control_plane::external_kubeconfig().is_some() {
        eprintln!("unset USERNS_TEST_KUBECONFIG: the demo starts its own control plane");
        return ExitCode::from(2);
    }
    let cp = control_plane::ControlPlane::builder().start();
    let (webhook_port, admin_port) = (free_port(), free_port());
    let env = format!(
        "KUBECONFIG={}\nKUBECTL={}\nSERVER={}\nWEBHOOK_PORT={webhook_port}\nADMIN_PORT={admin_port}\n",
        cp.kubeconfig_path().display(),
        cp.kubectl_path().display(),
        cp.server_url(),
    );
    // Written whole, then renamed: the script never reads half a file.
    let partial = format!("{env_file}.partial");
    if let Err(e) =
        std::fs::write(&partial, env).and_then(|()| std::fs::rename(&partial, &env_file))
    {
        eprintln!("writing {env_file}: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "control plane: kubernetes {} at {} (kubeconfig {})",
        cp.version(),
        cp.server_url(),
        cp.kubeconfig_path().display()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("control plane: stopping");
    drop(cp);
    ExitCode::SUCCESS
}
