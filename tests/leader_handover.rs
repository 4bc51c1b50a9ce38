//! Leader election with the real binary against the real API server: two replicas, the leader
//! stopped with SIGTERM hands over to the standby at once (the figures are printed, not asserted),
//! and a leader cut off from the API server stops leading before the standby may take over.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::labeler::{self, Labeler, eventually};

/// The binary under test (cargo sets this for the root package's tests and benchmarks).
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
/// The binary's default Lease name.
const LEASE: &str = "userns-labeler";
const LABEL: &str = "userns.io/idmap-supported";
const WAIT: Duration = Duration::from_secs(30);

/// One version of the Lease, as the test saw it.
#[derive(Debug, Clone)]
struct Version {
    seen: Instant,
    holder: Option<String>,
    duration: Option<i32>,
    transitions: Option<i32>,
}

/// Every version of the Lease from now on (deletions as a holder-less version), with the
/// instant the test's own watch delivered it.
#[derive(Clone)]
struct LeaseHistory(Arc<Mutex<Vec<Version>>>);

impl LeaseHistory {
    async fn record(api: Api<Lease>) -> LeaseHistory {
        let history = LeaseHistory(Arc::new(Mutex::new(Vec::new())));
        let (listed_tx, mut listed) = watch::channel(false);
        let versions = history.0.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={LEASE}"));
        tokio::spawn(async move {
            let stream = watcher(api, config);
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                let lease = match event {
                    Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => Some(l),
                    Ok(watcher::Event::Delete(_)) => None,
                    Ok(watcher::Event::InitDone) => {
                        let _ = listed_tx.send(true);
                        continue;
                    }
                    _ => continue,
                };
                let spec = lease.and_then(|l| l.spec).unwrap_or_default();
                versions.lock().unwrap().push(Version {
                    seen: Instant::now(),
                    // `<replica>_<suffix new on every start>`: the replica's name.
                    holder: spec
                        .holder_identity
                        .filter(|h| !h.is_empty())
                        .map(|h| h.rsplit_once('_').map_or(h.clone(), |(r, _)| r.to_owned())),
                    duration: spec.lease_duration_seconds,
                    transitions: spec.lease_transitions,
                });
            }
        });
        listed
            .wait_for(|l| *l)
            .await
            .expect("the Lease watch lists");
        history
    }

    fn versions(&self) -> Vec<Version> {
        self.0.lock().unwrap().clone()
    }

    fn holder(&self) -> Option<String> {
        self.versions().last().and_then(|v| v.holder.clone())
    }

    /// The first version held by `identity`.
    fn first_held_by(&self, identity: &str) -> Option<Version> {
        self.versions()
            .into_iter()
            .find(|v| v.holder.as_deref() == Some(identity))
    }

    async fn wait_for_holder(&self, identity: &str, timeout: Duration) -> Version {
        eventually(&format!("{identity} holds the lease"), timeout, || async {
            self.first_held_by(identity)
        })
        .await
    }
}

fn claim(name: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name,
                     "annotations": {"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}},
        "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap()
}

/// Creates a claim the table marks `true` and polls it every 10 ms until labelled.
async fn create_and_wait_labelled(api: &Api<PersistentVolumeClaim>, name: &str) -> Instant {
    api.create(&PostParams::default(), &claim(name))
        .await
        .expect("claim created");
    let deadline = Instant::now() + WAIT;
    loop {
        let labelled = api
            .get(name)
            .await
            .ok()
            .and_then(|c| labeler::label_of(&c, LABEL));
        if let Some(value) = labelled {
            assert_eq!(value, "true", "{name} label");
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{name} not labelled after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_leader_hands_the_lease_to_the_standby_which_keeps_labelling() {
    control_plane::install_crypto_provider();
    let cp = control_plane::shared();
    let admin = cp.client().await;
    let controller_ns = cp.namespace("labeler").await;
    let ns = cp.namespace("handover").await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &ns);
    let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &controller_ns).await;
    let history = LeaseHistory::record(Api::namespaced(admin.clone(), &controller_ns)).await;

    let first = Labeler::start(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "replica-a",
    );
    history.wait_for_holder("replica-a", WAIT).await;
    let second = Labeler::start(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "replica-b",
    );
    // The standby is ready (caches synced) and has looked at the lease.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(history.holder().as_deref(), Some("replica-a"));

    let first_log = first.log.clone();
    let sigterm = Instant::now();
    first.sigterm();
    let labelled = create_and_wait_labelled(&claims, "after-sigterm").await;
    let taken = history.wait_for_holder("replica-b", WAIT).await;
    let status = first.wait_exit();
    assert!(status.success(), "the old leader's exit status: {status}");

    // The old leader's last act: the release, seen between its hold and the new leader's.
    let versions = history.versions();
    let b = versions
        .iter()
        .position(|v| v.holder.as_deref() == Some("replica-b"))
        .unwrap();
    assert!(b >= 2, "versions: {versions:#?}");
    let (held_by_a, release) = (&versions[b - 2], &versions[b - 1]);
    assert_eq!(
        held_by_a.holder.as_deref(),
        Some("replica-a"),
        "{versions:#?}"
    );
    assert_eq!(release.holder, None, "released: {versions:#?}");
    assert_eq!(release.duration, Some(1), "{versions:#?}");
    assert_eq!(
        versions[b].transitions,
        held_by_a.transitions.map(|t| t + 1),
        "a takeover counts a transition: {versions:#?}"
    );
    // The old process logs the release, and nothing about the lease after it.
    let log = std::fs::read_to_string(&first_log).unwrap();
    let released_at = log.rfind("lease released").expect("the release is logged");
    assert!(
        !log[released_at..].contains("leading: this replica holds the lease"),
        "{log}"
    );

    // Labels keep being written, by the new leader.
    create_and_wait_labelled(&claims, "after-handover").await;
    assert!(second.metric("userns_labeler_label_writes_total", &[]) >= 1.0);

    let report = format!(
        "hand-over after SIGTERM: lease released after {}, replica-b holds it after {}, \
         a claim created right after SIGTERM labelled after {}",
        ms(release.seen - sigterm),
        ms(taken.seen - sigterm),
        ms(labelled - sigterm)
    );
    eprintln!("{report}");
    append_report(&report);
    assert!(second.stop().success());
}

/// With `USERNS_TEST_HANDOVER_REPORT=<file>`, the figures are appended there too.
fn append_report(line: &str) {
    if let Ok(path) = std::env::var("USERNS_TEST_HANDOVER_REPORT") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("report file");
        writeln!(file, "{line}").unwrap();
    }
}

/// A TCP relay to the API server that can be cut: open connections are closed, and new ones
/// are accepted and closed at once, until it is restored.
struct Relay {
    addr: String,
    open: watch::Sender<bool>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (open, _) = watch::channel(true);
        let state = open.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut = state.subscribe();
                if !*cut.borrow_and_update() {
                    continue; // dropped: closed at once
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|open| !open) => {}
                    }
                });
            }
        });
        Relay { addr, open }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

/// `kubeconfig` with its server replaced by `https://<addr>`.
fn via(kubeconfig: &Path, server: &str, addr: &str) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    assert!(text.contains(server), "{text}");
    let path = kubeconfig.with_file_name("kubeconfig-via-relay");
    std::fs::write(&path, text.replace(server, &format!("https://{addr}"))).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_leading_before_the_standby_takes_over() {
    control_plane::install_crypto_provider();
    let cp = control_plane::shared();
    let admin = cp.client().await;
    let controller_ns = cp.namespace("labeler").await;
    let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &controller_ns).await;
    let server = cp.server_url().to_string();
    let relay = Relay::start(server.trim_start_matches("https://").to_string()).await;
    let relayed = via(&kubeconfig, &server, &relay.addr);
    let history = LeaseHistory::record(Api::namespaced(admin.clone(), &controller_ns)).await;

    let first = Labeler::start(
        USERNS_LABELER,
        &relayed,
        &controller_ns,
        cp.dir(),
        "cut-off-a",
    );
    history.wait_for_holder("cut-off-a", WAIT).await;
    let second = Labeler::start(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "cut-off-b",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cut = Instant::now();
    relay.cut();
    // Poll the old leader's log for its resignation and the lease for the new holder.
    let (mut stopped, mut taken) = (None, None);
    let deadline = cut + WAIT;
    while stopped.is_none() || taken.is_none() {
        if stopped.is_none()
            && first
                .log_text()
                .contains("no successful renewal within the renew deadline")
        {
            stopped = Some(Instant::now());
        }
        if taken.is_none() {
            taken = history.first_held_by("cut-off-b").map(|v| v.seen);
        }
        assert!(
            Instant::now() < deadline,
            "after {WAIT:?}: stopped leading {stopped:?}, taken over {taken:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (stopped, taken) = (stopped.unwrap(), taken.unwrap());
    eprintln!(
        "API server cut off from the leader: it stopped leading after {}, the standby took over after {}",
        ms(stopped - cut),
        ms(taken - cut)
    );
    // By design 5 s apart (lease 15 s, renew deadline 10 s): never two leaders at once.
    assert!(
        stopped < taken,
        "the old leader stopped after the standby took over"
    );

    // Reconnected, the old leader stays a standby.
    relay.restore();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(history.holder().as_deref(), Some("cut-off-b"));
    let log = first.log_text();
    let resigned = log
        .find("no successful renewal within the renew deadline")
        .unwrap();
    assert!(
        !log[resigned..].contains("leading: this replica holds the lease"),
        "{log}"
    );
    assert!(first.stop().success());
    assert!(second.stop().success());
}
