//! Self-signed mode with several replicas sharing one CA through a Secret
//! (`--self-signed-ca-secret`), on the real API server: the real binary as a user bound only to
//! the RBAC of the chart's self-signed rendering, with the chart's empty CA Secret. The webhook
//! configuration has one webhook per replica (by URL, `failurePolicy: Fail`), so a pod is only
//! admitted once the API server has completed a TLS handshake with every replica, each verified
//! against the one `caBundle`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use userns_labeler::webhook::ca::{CERT_KEY, KEY_KEY, Origin};
use userns_labeler::webhook::{CaSecret, MUTATE_PODS_PATH, SelfSigned};
use userns_labeler_test_support::control_plane::{self, ControlPlane, TestNamespace};
use userns_labeler_test_support::labeler::{
    self, Labeler, USER, eventually, pods_webhook, webhook_configuration,
};
use userns_labeler_test_support::webhook::{https, pod, review};
use userns_labeler_test_support::{repo_root, tool};

/// The binary under test.
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const WAIT: Duration = Duration::from_secs(30);
const INJECTIONS: &str = "userns_labeler_webhook_ca_bundle_injections_total";

/// A controller namespace with the chart's self-signed RBAC (bound to [`USER`]) and its empty
/// CA Secret; a workload namespace the webhook configuration applies to.
struct World {
    cp: &'static ControlPlane,
    admin: Client,
    ns: TestNamespace,
    work: TestNamespace,
    kubeconfig: std::path::PathBuf,
    /// The CA Secret, the webhook configuration and the driver ConfigMap, as rendered.
    secret: String,
    config: String,
    config_map: String,
}

impl World {
    async fn new(prefix: &str) -> World {
        control_plane::install_crypto_provider();
        let cp = control_plane::shared();
        let admin = cp.client().await;
        let ns = cp.namespace(prefix).await;
        let work = cp.namespace(&format!("{prefix}-pods")).await;
        let output = Command::new(tool("helm"))
            .args(["template", ns.name()])
            .arg(repo_root().join("deploy/helm/userns-labeler"))
            .args(["--namespace", ns.name(), "--set", "tls.mode=self-signed"])
            .output()
            .expect("helm runs");
        assert!(
            output.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let rendering = String::from_utf8(output.stdout).unwrap();
        let objects: Vec<Value> = serde_saphyr::from_multiple(&rendering).unwrap();
        let find = |kind: &str| {
            objects
                .iter()
                .find(|o| o["kind"] == kind)
                .unwrap_or_else(|| panic!("the self-signed rendering has no {kind}"))
                .clone()
        };
        let name_of = |kind: &str| find(kind)["metadata"]["name"].as_str().unwrap().to_string();
        labeler::install_rbac(&admin, &ns, &rendering).await;
        // The chart's Secret, as rendered: empty.
        let secret = find("Secret");
        assert!(secret.get("data").is_none(), "rendered with data: {secret}");
        let secret: Secret = serde_json::from_value(secret).unwrap();
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        World {
            cp,
            kubeconfig: cp.user_kubeconfig(USER, &[]),
            secret: secret.metadata.name.unwrap(),
            config: name_of("MutatingWebhookConfiguration"),
            config_map: name_of("ConfigMap"),
            admin,
            ns,
            work,
        }
    }

    fn args(&self, secret: &str) -> Vec<String> {
        [
            "--self-signed-ca-secret",
            secret,
            "--webhook-config-name",
            &self.config,
            "--config-map",
            &self.config_map,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Starts a replica without waiting; `extra` after the shared flags.
    fn spawn(&self, identity: &str, extra: &[&str]) -> Labeler {
        self.spawn_with_secret(identity, &self.secret, extra)
    }

    /// [`World::spawn`] naming another CA Secret.
    fn spawn_with_secret(&self, identity: &str, secret: &str, extra: &[&str]) -> Labeler {
        let mut args: Vec<&str> = vec!["--self-signed-tls"];
        let shared = self.args(secret);
        args.extend(shared.iter().map(String::as_str));
        args.extend(extra);
        Labeler::spawn(
            USERNS_LABELER,
            &self.kubeconfig,
            &self.ns,
            self.cp.dir(),
            identity,
            &args,
        )
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn configs(&self) -> Api<MutatingWebhookConfiguration> {
        Api::all(self.admin.clone())
    }

    /// The Secret's `ca.crt`, once there.
    async fn stored_ca(&self) -> String {
        let secrets = self.secrets();
        eventually("a CA in the Secret", WAIT, || {
            let secrets = secrets.clone();
            let name = self.secret.clone();
            async move {
                let data = secrets.get(&name).await.ok()?.data?;
                String::from_utf8(data.get(CERT_KEY)?.0.clone()).ok()
            }
        })
        .await
    }

    /// One webhook per replica, by URL, for pods of the workload namespace; no caBundle (the
    /// replicas write it).
    async fn register(&self, replicas: &[&Labeler]) {
        let webhooks = replicas
            .iter()
            .enumerate()
            .map(|(i, labeler)| {
                pods_webhook(
                    &format!("replica-{i}.pods.userns.io"),
                    &format!("https://{}{MUTATE_PODS_PATH}", labeler.webhook),
                    &[&self.work.to_string()],
                )
            })
            .collect();
        self.configs()
            .create(
                &PostParams::default(),
                &webhook_configuration(&self.config, webhooks),
            )
            .await
            .unwrap();
    }

    /// The configuration's caBundle once every webhook carries the same one, and its
    /// resourceVersion.
    async fn ca_bundle(&self) -> (String, String) {
        let configs = self.configs();
        eventually("one caBundle on every webhook", WAIT, || {
            let configs = configs.clone();
            let name = self.config.clone();
            async move {
                let config = configs.get(&name).await.ok()?;
                let bundles: Vec<Option<ByteString>> = config
                    .webhooks?
                    .into_iter()
                    .map(|w| w.client_config.ca_bundle)
                    .collect();
                let first = bundles.first()?.clone()?;
                bundles.iter().all(|b| b.as_ref() == Some(&first)).then(|| {
                    (
                        String::from_utf8(first.0).unwrap(),
                        config.metadata.resource_version.unwrap(),
                    )
                })
            }
        })
        .await
    }

    /// The configuration's resourceVersion now.
    async fn config_version(&self) -> String {
        let config = self.configs().get(&self.config).await.unwrap();
        config.metadata.resource_version.unwrap()
    }

    /// Dry-run creates a pod in the workload namespace until the API server admits it: with
    /// `failurePolicy: Fail` on every replica's webhook, only once it has called each of them
    /// over TLS verified against the caBundle.
    async fn pod_admitted_through_every_replica(&self) {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), &self.work);
        let pod: Pod = serde_json::from_value(pod("through-every-replica")).unwrap();
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let started = Instant::now();
        loop {
            let last_error = match pods.create(&dry_run, &pod).await {
                Ok(created) => {
                    let annotations = created.metadata.annotations.unwrap_or_default();
                    assert!(
                        annotations.contains_key("userns.io/decision"),
                        "admitted without a decision: {annotations:?}"
                    );
                    return;
                }
                Err(error) => error.to_string(),
            };
            assert!(
                started.elapsed() < WAIT,
                "no pod admitted through every replica within {WAIT:?}: {last_error}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes the Secret's data: what an operator does to rotate the CA.
    async fn empty_secret(&self) {
        self.secrets()
            .patch(
                &self.secret,
                &PatchParams::default(),
                &Patch::<Value>::Json(
                    serde_json::from_value(json!([{"op": "remove", "path": "/data"}])).unwrap(),
                ),
            )
            .await
            .unwrap();
    }

    async fn cleanup(&self) {
        let _ = self
            .configs()
            .delete(&self.config, &DeleteParams::default())
            .await;
    }
}

/// A TLS handshake and one admission with `labeler`'s webhook, verified as `localhost`
/// against `ca_pem` only.
async fn admits_over_tls_trusting(labeler: &Labeler, ca_pem: &str) -> Result<(), https::Error> {
    let addr: SocketAddr = labeler.webhook.parse().unwrap();
    let mut sender = https::connect(addr, "localhost", https::trusting(ca_pem)).await?;
    let body = Bytes::from(serde_json::to_vec(&review("CREATE", "app", &pod("web"))).unwrap());
    let (status, _) = https::post(&mut sender, MUTATE_PODS_PATH, body).await?;
    assert_eq!(status, http::StatusCode::OK);
    Ok(())
}

fn ready(labelers: &[&Labeler]) {
    for labeler in labelers {
        labeler.wait_ready(WAIT);
    }
}

fn injections(labelers: &[&Labeler]) -> f64 {
    labelers
        .iter()
        .map(|l| l.metric(INJECTIONS, &["result=\"ok\""]))
        .sum()
}

fn count(labelers: &[&Labeler], line: &str) -> usize {
    labelers
        .iter()
        .filter(|l| l.log_text().contains(line))
        .count()
}

const GENERATED: &str = "generated a CA and stored it in the shared CA Secret";
const READ: &str = "the shared CA";

#[tokio::test]
async fn replicas_sharing_the_ca_secret_serve_under_one_ca_bundle_written_once_and_kept() {
    let world = World::new("shared-ca").await;
    // Two fresh replicas started together on the empty Secret.
    let a = world.spawn("a", &[]);
    let b = world.spawn("b", &[]);
    ready(&[&a, &b]);
    assert_eq!(
        count(&[&a, &b], GENERATED),
        1,
        "exactly one generated the CA"
    );
    assert_eq!(count(&[&a, &b], READ), 2);
    let stored = world.stored_ca().await;

    world.register(&[&a, &b]).await;
    let (bundle, version) = world.ca_bundle().await;
    assert_eq!(bundle, stored, "the caBundle is the Secret's CA");
    for labeler in [&a, &b] {
        admits_over_tls_trusting(labeler, &bundle)
            .await
            .unwrap_or_else(|e| panic!("TLS with {} against the caBundle: {e}", labeler.webhook));
    }
    world.pod_admitted_through_every_replica().await;

    // Written once (one replica's write; the other found it there), then left alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(world.config_version().await, version, "caBundle rewritten");
    assert_eq!(injections(&[&a, &b]), 1.0);

    // SIGKILL of one replica: the other keeps serving; the killed one, restarted on the same
    // address, reads the same CA, serves under the same caBundle and writes nothing.
    let a_webhook = a.webhook.clone();
    a.kill();
    admits_over_tls_trusting(&b, &bundle).await.unwrap();
    let a = world.spawn("a-restarted", &["--webhook-addr", &a_webhook]);
    ready(&[&a]);
    assert!(a.log_text().contains("read the shared CA from its Secret"));
    admits_over_tls_trusting(&a, &bundle).await.unwrap();
    world.pod_admitted_through_every_replica().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.config_version().await, version, "caBundle rewritten");
    assert_eq!(a.metric(INJECTIONS, &["result=\"ok\""]), 0.0);
    assert_eq!(world.stored_ca().await, stored);
    world.cleanup().await;
}

#[tokio::test]
async fn concurrent_starts_on_an_empty_secret_store_one_ca_and_all_use_it() {
    let world = World::new("ca-race").await;
    let client = world.cp.user_client(USER, &[]).await;
    let secret = CaSecret::new(client, &world.ns, &world.secret);
    let starts = (0..8).map(|_| {
        let secret = secret.clone();
        tokio::spawn(async move { secret.load_or_create().await })
    });
    let results: Vec<_> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let origins: BTreeMap<String, usize> =
        results.iter().fold(BTreeMap::new(), |mut m, (_, origin)| {
            *m.entry(format!("{origin:?}")).or_default() += 1;
            m
        });
    eprintln!("8 concurrent starts: {origins:?}");
    let generated = results
        .iter()
        .filter(|(_, o)| *o == Origin::Generated)
        .count();
    assert_eq!(generated, 1, "{origins:?}");
    let stored = world.stored_ca().await;
    for (ca, _) in &results {
        assert_eq!(
            ca.cert_pem(),
            stored,
            "a replica uses another CA than stored"
        );
    }
    // A later start reads it.
    let (ca, origin) = secret.load_or_create().await.unwrap();
    assert_eq!((ca.cert_pem(), origin), (stored.as_str(), Origin::Stored));
}

/// Runs `labeler` to its exit and expects a failure: non-zero, `/readyz` never 200, every
/// string of `causes` in the log.
fn expect_exit(mut labeler: Labeler, case: &str, causes: &[&str]) {
    let (status, was_ready) = labeler.until_exit(WAIT);
    let log = labeler.log_text();
    let status = status.unwrap_or_else(|| panic!("{case}: still running; log:\n{log}"));
    assert!(!status.success(), "{case}: exit status {status}");
    assert!(!was_ready, "{case}: /readyz answered 200");
    for cause in causes {
        assert!(
            log.contains(cause),
            "{case}: the log does not say {cause:?}:\n{log}"
        );
    }
    eprintln!(
        "{case}: {status}; {}",
        log.lines().last().unwrap_or_default()
    );
}

#[tokio::test]
async fn a_ca_secret_with_garbage_missing_or_forbidden_stops_the_binary_with_an_error_naming_it() {
    let world = World::new("ca-invalid").await;
    // A Secret the chart's RBAC does not cover (it grants the one CA Secret by name).
    let other = format!("{}-other", world.secret);
    expect_exit(
        world.spawn_with_secret("forbidden", &other, &[]),
        "forbidden",
        &[
            &format!("{}/{other}", world.ns.name()),
            "forbidden",
            "needs get and update on it",
        ],
    );
    let leaf = SelfSigned::generate(&[]).unwrap();
    // (case, the Secret's data or `None` for no Secret, what the log must say)
    type Case<'a> = (&'a str, Option<[(&'a str, &'a str); 2]>, &'a [&'a str]);
    let cases: [Case; 3] = [
        (
            "garbage",
            Some([(CERT_KEY, "garbage"), (KEY_KEY, "garbage")]),
            &["holds no usable CA", "ca.crt holds no PEM certificate"],
        ),
        (
            "not-a-ca",
            Some([(CERT_KEY, &leaf.cert_pem), (KEY_KEY, &leaf.key_pem)]),
            &["holds no usable CA", "ca.crt is not a CA certificate"],
        ),
        ("missing", None, &["not found", "create it empty"]),
    ];
    for (case, data, causes) in cases {
        match data {
            Some(data) => {
                let data: BTreeMap<String, String> = data
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                world
                    .secrets()
                    .patch(
                        &world.secret,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"stringData": data})),
                    )
                    .await
                    .unwrap();
            }
            None => {
                world
                    .secrets()
                    .delete(&world.secret, &DeleteParams::default())
                    .await
                    .unwrap();
            }
        }
        let before = world.secrets().get_opt(&world.secret).await.unwrap();
        let named = format!("{}/{}", world.ns.name(), world.secret);
        let causes: Vec<&str> = causes.iter().copied().chain([named.as_str()]).collect();
        expect_exit(world.spawn(case, &[]), case, &causes);
        let after = world.secrets().get_opt(&world.secret).await.unwrap();
        assert_eq!(
            after.and_then(|s| s.data),
            before.and_then(|s| s.data),
            "{case}: the Secret was changed"
        );
    }
}

#[tokio::test]
async fn a_ca_rotated_through_the_secret_is_adopted_by_the_replica_left_running() {
    let world = World::new("ca-rotate").await;
    let a = world.spawn("a", &[]);
    ready(&[&a]);
    let b = world.spawn("b", &[]);
    ready(&[&b]);
    world.register(&[&a, &b]).await;
    let (old, _) = world.ca_bundle().await;
    world.pod_admitted_through_every_replica().await;

    // Rotation: the Secret emptied, one replica restarted; it stores a new CA and writes it
    // into the caBundle, and the replica left running adopts it instead of writing its own back.
    world.empty_secret().await;
    let a_webhook = a.webhook.clone();
    let status = a.stop();
    assert!(status.success(), "{status}");
    let a = world.spawn("a-restarted", &["--webhook-addr", &a_webhook]);
    ready(&[&a]);
    assert!(a.log_text().contains(GENERATED), "{}", a.log_text());
    let new = world.stored_ca().await;
    assert_ne!(new, old);
    let (bundle, _) = eventually("the new CA in the caBundle", WAIT, || async {
        let (bundle, version) = world.ca_bundle().await;
        (bundle == new).then_some((bundle, version))
    })
    .await;
    eventually(
        "the running replica serving under the new CA",
        WAIT,
        || async { admits_over_tls_trusting(&b, &bundle).await.ok() },
    )
    .await;
    assert!(
        b.log_text()
            .contains("now serving a certificate issued from it"),
        "{}",
        b.log_text()
    );
    assert!(admits_over_tls_trusting(&b, &old).await.is_err());
    world.pod_admitted_through_every_replica().await;
    let version = world.config_version().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(world.config_version().await, version, "caBundle rewritten");
    assert_eq!(world.ca_bundle().await.0, new);
    world.cleanup().await;
}
