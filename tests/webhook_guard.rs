//! The chart's self-signed mode on the real API server: RBAC lets the labeler's service account
//! update its own webhook configuration (to write its CA), and the chart's
//! ValidatingAdmissionPolicy narrows that update to the caBundle. Requests are made as the
//! service account's user name, authenticated by a client certificate.

use std::io::Write;
use std::process::{Command, Stdio};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, PostParams};
use serde_json::Value;
use userns_labeler_test_support::control_plane as common;

const CHART: &str = "deploy/helm/userns-labeler";

fn kubectl(cp: &common::ControlPlane, args: &[&str], stdin: &str) {
    let mut child = cp
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_labelers_service_account_may_change_only_the_ca_bundle_of_its_configuration() {
    common::install_crypto_provider();
    let cp = common::shared();
    let ns = cp.namespace("guard").await;
    let release = format!("guard-{}", ns.name());
    let output = Command::new(userns_labeler_test_support::tool("helm"))
        .args(["template", &release])
        .arg(userns_labeler_test_support::repo_root().join(CHART))
        .args(["--namespace", &ns])
        .args(["--set", "tls.mode=self-signed"])
        .args(["--set", &format!("webhook.namespaces={{{}}}", ns.name())])
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendering = String::from_utf8(output.stdout).unwrap();
    let objects: Vec<Value> = serde_saphyr::from_multiple(&rendering).unwrap();
    let name_of = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in the rendering"))["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let account = name_of("ServiceAccount");
    let config = name_of("MutatingWebhookConfiguration");
    assert!(
        objects
            .iter()
            .any(|o| o["kind"] == "ValidatingAdmissionPolicy"),
        "self-signed mode renders the policy"
    );
    kubectl(cp, &["apply", "--server-side", "-f", "-"], &rendering);

    let user = format!("system:serviceaccount:{}:{account}", ns.name());
    let labeler = common::client_from_kubeconfig(&cp.user_kubeconfig(&user, &[])).await;
    let as_labeler: Api<MutatingWebhookConfiguration> = Api::all(labeler);
    let as_admin: Api<MutatingWebhookConfiguration> = Api::all(cp.client().await);

    // The policy takes effect a moment after it is created: the first refused change shows it.
    let refused = |change: fn(&mut MutatingWebhookConfiguration)| {
        let as_labeler = as_labeler.clone();
        let config = config.clone();
        async move {
            let mut current = as_labeler.get(&config).await.unwrap();
            change(&mut current);
            as_labeler
                .replace(&config, &PostParams::default(), &current)
                .await
                .err()
        }
    };
    let started = std::time::Instant::now();
    let error = loop {
        let route_kube_system = |c: &mut MutatingWebhookConfiguration| {
            let webhook = &mut c.webhooks.as_mut().unwrap()[0];
            webhook.namespace_selector = Some(Default::default());
        };
        if let Some(error) = refused(route_kube_system).await {
            break error;
        }
        // Undo what got through before the policy was in force.
        kubectl(
            cp,
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            &rendering,
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the policy never refused a selector change"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(error.to_string().contains("only the caBundle"), "{error}");

    let retarget = |c: &mut MutatingWebhookConfiguration| {
        let service = c.webhooks.as_mut().unwrap()[0]
            .client_config
            .service
            .as_mut()
            .unwrap();
        service.namespace = "elsewhere".to_string();
    };
    assert!(refused(retarget).await.is_some(), "clientConfig is refused");
    let more_operations = |c: &mut MutatingWebhookConfiguration| {
        let rules = c.webhooks.as_mut().unwrap()[0].rules.as_mut().unwrap();
        rules[0].operations = Some(vec!["CREATE".into(), "UPDATE".into()]);
    };
    assert!(
        refused(more_operations).await.is_some(),
        "rules are refused"
    );

    let new_ca = |c: &mut MutatingWebhookConfiguration| {
        for webhook in c.webhooks.iter_mut().flatten() {
            webhook.client_config.ca_bundle = Some(ByteString(
                b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_vec(),
            ));
        }
    };
    assert!(
        refused(new_ca).await.is_none(),
        "a caBundle change is allowed"
    );

    // Anyone else is not affected.
    let mut current = as_admin.get(&config).await.unwrap();
    more_operations(&mut current);
    as_admin
        .replace(&config, &PostParams::default(), &current)
        .await
        .expect("an administrator may change the rules");

    kubectl(cp, &["delete", "--ignore-not-found", "-f", "-"], &rendering);
}
