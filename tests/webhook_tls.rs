//! The webhook over real TLS on loopback: certificates from files, rotation on disk without a
//! restart (plain overwrite and a Secret-volume symlink swap), self-signed names, shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio_util::sync::CancellationToken;
use userns_labeler::keys::Keys;
use userns_labeler::webhook::{
    AdmissionSettings, MUTATE_PODS_PATH, SelfSigned, ServerTls, WebhookArgs, WebhookError,
    WebhookState, serve, serve_tls,
};
use userns_labeler_test_support::webhook::*;

const RELOAD: Duration = Duration::from_millis(100);

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

struct Running {
    addr: SocketAddr,
    state: Arc<WebhookState>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), WebhookError>>,
}

async fn start(tls: ServerTls) -> Running {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let state = state(storage_world(&Keys::default()));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_tls(
        listener,
        tls,
        state.clone(),
        AdmissionSettings::default(),
        shutdown.clone(),
    ));
    Running {
        addr,
        state,
        shutdown,
        task,
    }
}

fn review_body() -> Bytes {
    Bytes::from(serde_json::to_vec(&review("CREATE", "app", &pod("web"))).unwrap())
}

/// One admission over a fresh connection verified against `ca_pem` as `name`.
async fn admit_over_tls(
    addr: SocketAddr,
    name: &str,
    ca_pem: &str,
) -> Result<Answer, https::Error> {
    let mut sender = https::connect(addr, name, https::trusting(ca_pem)).await?;
    let (status, body) = https::post(&mut sender, MUTATE_PODS_PATH, review_body()).await?;
    assert_eq!(status, http::StatusCode::OK);
    Ok(answer(&body))
}

fn write_pair(dir: &Path, pair: &SelfSigned) -> (PathBuf, PathBuf) {
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    (cert, key)
}

/// `pair` written into `dir` and served from there, re-read every [`RELOAD`]: the paths of
/// the certificate and the key, and the server.
async fn serve_from_files(dir: &Path, pair: &SelfSigned) -> (PathBuf, PathBuf, Running) {
    let (cert, key) = write_pair(dir, pair);
    let tls = ServerTls::from_files(&cert, &key, RELOAD).await.unwrap();
    (cert, key, start(tls).await)
}

/// Polls until a connection trusting `ca_pem` succeeds, for at most 5 s.
async fn until_served_by(addr: SocketAddr, ca_pem: &str) -> Duration {
    let started = Instant::now();
    loop {
        match admit_over_tls(addr, "localhost", ca_pem).await {
            Ok(answer) => {
                assert!(answer.allowed && answer.patch.is_some());
                return started.elapsed();
            }
            Err(error) if started.elapsed() < Duration::from_secs(5) => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the rotated certificate was not served within 5 s: {error}"),
        }
    }
}

#[tokio::test]
async fn a_client_trusting_the_ca_gets_a_decision_over_tls() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let pair = SelfSigned::generate(&[]).unwrap();
    let (_, _, server) = serve_from_files(dir.path(), &pair).await;

    for name in ["localhost", "127.0.0.1"] {
        let answer = admit_over_tls(server.addr, name, &pair.ca_pem)
            .await
            .unwrap_or_else(|e| panic!("TLS as {name}: {e}"));
        assert!(answer.allowed);
        let after = patched(
            &review("CREATE", "app", &pod("web"))["request"]["object"],
            &answer.patch.unwrap(),
        );
        assert_eq!(after["spec"]["hostUsers"], serde_json::json!(false));
    }
    // Keep-alive: several requests on one connection.
    let mut sender = https::connect(server.addr, "localhost", https::trusting(&pair.ca_pem))
        .await
        .unwrap();
    for _ in 0..20 {
        let (status, _) = https::post(&mut sender, MUTATE_PODS_PATH, review_body())
            .await
            .unwrap();
        assert_eq!(status, http::StatusCode::OK);
    }
    // A client trusting another CA is refused.
    let other = SelfSigned::generate(&[]).unwrap();
    assert!(
        admit_over_tls(server.addr, "localhost", &other.ca_pem)
            .await
            .is_err()
    );
    // A name the certificate does not carry is refused.
    assert!(
        admit_over_tls(server.addr, "webhook.example.com", &pair.ca_pem)
            .await
            .is_err()
    );

    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server stops on the token")
        .unwrap()
        .expect("a clean stop");
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_served_without_a_restart() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let first = SelfSigned::generate(&[]).unwrap();
    let (cert, key, server) = serve_from_files(dir.path(), &first).await;
    admit_over_tls(server.addr, "localhost", &first.ca_pem)
        .await
        .expect("the first certificate is served");

    // A new CA and serving pair. The certificate lands first: the pair on disk does not match
    // for a moment, and the server keeps serving the old one meanwhile.
    let second = SelfSigned::generate(&[]).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    tokio::time::sleep(RELOAD * 4).await;
    admit_over_tls(server.addr, "localhost", &first.ca_pem)
        .await
        .expect("a half-written rotation keeps the previous certificate");
    std::fs::write(&key, &second.key_pem).unwrap();

    let took = until_served_by(server.addr, &second.ca_pem).await;
    eprintln!("rotated certificate served after {took:?}");
    assert!(
        admit_over_tls(server.addr, "localhost", &first.ca_pem)
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    assert!(
        server.state.metrics.tls_reloads(false) >= 1,
        "the half-written pair was refused"
    );
    assert_eq!(server.state.metrics.tls_reloads(true), 1);
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

/// The kubelet updates a Secret volume by writing a new timestamped directory and renaming
/// the `..data` symlink over the old one; `tls.crt` and `tls.key` are symlinks through it.
#[tokio::test]
async fn a_secret_volume_symlink_swap_is_picked_up() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let publish = |version: &str, pair: &SelfSigned| {
        let data = root.join(version);
        std::fs::create_dir(&data).unwrap();
        write_pair(&data, pair);
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    };
    let first = SelfSigned::generate(&[]).unwrap();
    publish("..2026_11_27_01", &first);
    std::os::unix::fs::symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", root.join("tls.key")).unwrap();
    let server = start(
        ServerTls::from_files(&root.join("tls.crt"), &root.join("tls.key"), RELOAD)
            .await
            .unwrap(),
    )
    .await;
    admit_over_tls(server.addr, "localhost", &first.ca_pem)
        .await
        .unwrap();

    let second = SelfSigned::generate(&[]).unwrap();
    publish("..2026_11_27_02", &second);
    until_served_by(server.addr, &second.ca_pem).await;
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn self_signed_certificates_carry_the_extra_names() {
    install_provider();
    let pair = SelfSigned::generate(&[
        "userns-labeler-webhook.userns-labeler.svc".to_string(),
        "10.96.0.17".to_string(),
    ])
    .unwrap();
    let server = start(
        ServerTls::from_pem(&pair.cert_pem, &pair.key_pem)
            .await
            .unwrap(),
    )
    .await;
    for name in [
        "localhost",
        "127.0.0.1",
        "userns-labeler-webhook.userns-labeler.svc",
        "10.96.0.17",
    ] {
        admit_over_tls(server.addr, name, &pair.ca_pem)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(matches!(
        SelfSigned::generate(&["not a name!".to_string()]),
        Err(WebhookError::InvalidSan(_))
    ));
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

/// rustls compares the key's public key with the certificate's when the pair is loaded:
/// a mismatch is an error before anything is served, with a plain message.
#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_is_refused_when_loaded() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (
        SelfSigned::generate(&[]).unwrap(),
        SelfSigned::generate(&[]).unwrap(),
    );
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    let error = ServerTls::from_files(&cert, &key, RELOAD)
        .await
        .err()
        .expect("a mismatched pair is refused");
    assert_eq!(error.category(), "load_certificate");
    assert!(
        error
            .to_string()
            .ends_with("the private key does not match the certificate (their public keys differ)"),
        "{error}"
    );
    let error = ServerTls::from_pem(&first.cert_pem, &second.key_pem)
        .await
        .err()
        .expect("a mismatched pair is refused");
    assert!(error.to_string().contains("does not match"), "{error}");
}

/// Files rewritten with the content already served (a `touch`, an unchanged Secret update)
/// are not a reload.
#[tokio::test]
async fn the_same_pair_written_again_is_not_a_reload() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let pair = SelfSigned::generate(&[]).unwrap();
    let (cert, _, server) = serve_from_files(dir.path(), &pair).await;
    // Later than the file timestamps' granularity, and a new inode: the stamps differ.
    tokio::time::sleep(RELOAD).await;
    std::fs::remove_file(&cert).unwrap();
    write_pair(dir.path(), &pair);
    tokio::time::sleep(RELOAD * 5).await;
    admit_over_tls(server.addr, "localhost", &pair.ca_pem)
        .await
        .unwrap();
    assert_eq!(server.state.metrics.tls_reloads(true), 0);
    assert_eq!(server.state.metrics.tls_reloads(false), 0);
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

fn unused_client() -> kube::Client {
    let config = kube::Config::new("https://127.0.0.1:9".parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

#[tokio::test]
async fn serve_refuses_to_start_without_a_certificate() {
    install_provider();
    let state = state(storage_world(&Keys::default()));
    let args = WebhookArgs {
        webhook_addr: "127.0.0.1:0".parse().unwrap(),
        ..WebhookArgs::default()
    };
    let error = serve(
        &args,
        state.clone(),
        unused_client(),
        "default",
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, WebhookError::NoTlsSource), "{error}");

    let args = WebhookArgs {
        tls_cert_file: Some("/nonexistent/tls.crt".into()),
        tls_key_file: Some("/nonexistent/tls.key".into()),
        ..args
    };
    let error = serve(
        &args,
        state,
        unused_client(),
        "default",
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.category(), "load_certificate");
    assert!(
        error.to_string().contains("/nonexistent/tls.crt"),
        "{error}"
    );
}

#[tokio::test]
async fn serve_with_self_signed_tls_listens_and_stops_on_the_token() {
    install_provider();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = WebhookArgs {
        webhook_addr: SocketAddr::from(([127, 0, 0, 1], port)),
        self_signed_tls: true,
        ..WebhookArgs::default()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let state = state(storage_world(&Keys::default()));
        let shutdown = shutdown.clone();
        async move { serve(&args, state, unused_client(), "default", shutdown).await }
    });
    // It accepts TCP connections (the CA is not exposed without a webhook configuration).
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(started.elapsed() < Duration::from_secs(5), "never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops on the token")
        .unwrap()
        .unwrap();
}
