//! Start-up failures of the real `userns-labeler run`'s listeners: a webhook certificate that
//! does not match its key, certificate files missing or unreadable, a port already in use. Each
//! ends the process non-zero within seconds with the cause in its log, and `/readyz` never
//! answers 200 meanwhile: a replica whose webhook does not serve must not look healthy.

use std::path::PathBuf;
use std::time::Duration;

use userns_labeler::webhook::SelfSigned;
use userns_labeler_test_support::control_plane as common;
use userns_labeler_test_support::labeler::{self, Labeler};

/// The binary under test.
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");

/// How long a failing process may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(15);

struct Setup {
    cp: &'static common::ControlPlane,
    kubeconfig: PathBuf,
    namespace: common::TestNamespace,
    dir: tempfile::TempDir,
}

/// The least-privileged user of the other binary tests, so that a process that does not fail
/// (as before the fix) runs normally and becomes ready.
async fn setup(prefix: &str) -> Setup {
    common::install_crypto_provider();
    let cp = common::shared();
    let admin = cp.client().await;
    let namespace = cp.namespace(prefix).await;
    let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &namespace).await;
    Setup {
        cp,
        kubeconfig,
        namespace,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn write(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    /// `pair` as `tls.crt` and `tls.key`: their paths.
    fn write_pair(&self, pair: &SelfSigned) -> (String, String) {
        (
            self.write("tls.crt", &pair.cert_pem),
            self.write("tls.key", &pair.key_pem),
        )
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Runs the binary with `args` and expects it to fail: a non-zero exit within
    /// [`EXIT_WITHIN`], `/readyz` never 200, and a log holding every string of `causes`.
    fn expect_failure(&self, identity: &str, args: &[&str], causes: &[&str]) {
        let mut labeler = Labeler::spawn(
            USERNS_LABELER,
            &self.kubeconfig,
            &self.namespace,
            self.cp.dir(),
            identity,
            args,
        );
        let (status, was_ready) = labeler.until_exit(EXIT_WITHIN);
        let log = labeler.log_text();
        let status = status.unwrap_or_else(|| {
            panic!(
                "{identity}: still running {EXIT_WITHIN:?} after start (/readyz answered 200: \
                 {was_ready}); log:\n{log}"
            )
        });
        assert!(!status.success(), "{identity}: exit status {status}");
        assert!(!was_ready, "{identity}: /readyz answered 200");
        for cause in causes {
            assert!(
                log.contains(cause),
                "{identity}: the log does not say {cause:?}:\n{log}"
            );
        }
        eprintln!("{identity}: {status}; {}", last_line(&log));
    }
}

fn last_line(log: &str) -> &str {
    log.lines().last().unwrap_or_default()
}

fn tls_flags<'a>(cert: &'a str, key: &'a str) -> [&'a str; 4] {
    ["--tls-cert-file", cert, "--tls-key-file", key]
}

#[tokio::test]
async fn a_certificate_that_does_not_match_its_key_ends_the_process_with_the_cause_logged() {
    let setup = setup("mismatch").await;
    let (first, second) = (
        SelfSigned::generate(&[]).unwrap(),
        SelfSigned::generate(&[]).unwrap(),
    );
    let cert = setup.write("tls.crt", &first.cert_pem);
    let key = setup.write("tls.key", &second.key_pem);
    setup.expect_failure(
        "mismatch",
        &tls_flags(&cert, &key),
        &[
            &cert,
            "the private key does not match the certificate",
            "exiting",
        ],
    );
}

#[tokio::test]
async fn missing_or_unreadable_certificate_files_end_the_process_with_the_cause_logged() {
    let setup = setup("missing").await;
    let (cert, key) = setup.write_pair(&SelfSigned::generate(&[]).unwrap());
    let absent = setup.path("absent.pem");
    // A directory where the key should be: exists, cannot be read as a file.
    let directory = setup.path("key-dir");
    std::fs::create_dir(&directory).unwrap();
    let cases = [
        (
            "missing-cert",
            (absent.as_str(), key.as_str()),
            "No such file",
        ),
        (
            "missing-key",
            (cert.as_str(), absent.as_str()),
            "No such file",
        ),
        (
            "key-is-a-directory",
            (cert.as_str(), directory.as_str()),
            "Is a directory",
        ),
    ];
    for (identity, (cert, key), cause) in cases {
        let culprit = if cert == absent { cert } else { key };
        setup.expect_failure(
            identity,
            &tls_flags(cert, key),
            &[&format!("reading {culprit}"), cause, "exiting"],
        );
    }
}

#[tokio::test]
async fn a_port_in_use_ends_the_process_with_the_cause_logged() {
    let setup = setup("port-in-use").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    for (identity, flag, cause) in [
        (
            "webhook-port",
            "--webhook-addr",
            "binding the webhook server",
        ),
        ("admin-port", "--admin-addr", "admin server on"),
    ] {
        setup.expect_failure(
            identity,
            &["--self-signed-tls", flag, &taken_addr],
            &[cause, &taken_addr, "Address already in use", "exiting"],
        );
    }
    drop(taken);
}

/// The same binary, flags and user with a matching pair: it becomes ready (the failures above
/// come from the pair, not from the setup).
#[tokio::test]
async fn a_matching_pair_serves_and_becomes_ready() {
    let setup = setup("matching").await;
    let (cert, key) = setup.write_pair(&SelfSigned::generate(&[]).unwrap());
    let labeler = Labeler::spawn(
        USERNS_LABELER,
        &setup.kubeconfig,
        &setup.namespace,
        setup.cp.dir(),
        "matching",
        &tls_flags(&cert, &key),
    );
    labeler.wait_ready(Duration::from_secs(30));
    assert!(
        std::net::TcpStream::connect(&labeler.webhook).is_ok(),
        "the webhook port is open"
    );
    assert!(labeler.stop().success());
}
