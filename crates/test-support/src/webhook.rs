//! Shared by the webhook tests and the load benchmark: caches filled from objects without an
//! API server, object and AdmissionReview builders, and applying a response's patch.

use std::collections::BTreeMap;
use std::sync::Arc;

use json_patch::Patch;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::core::{ObjectMeta, PartialObjectMeta};
use serde_json::{Value, json};
use userns_labeler::cache::Caches;
use userns_labeler::capability::DriverTable;
use userns_labeler::keys::Keys;
use userns_labeler::webhook::{WebhookMetrics, WebhookState};

/// Caches holding exactly these objects, as if every watch had synced.
pub fn caches(
    claims: Vec<PersistentVolumeClaim>,
    volumes: Vec<PersistentVolume>,
    classes: Vec<StorageClass>,
    namespaces: Vec<PartialObjectMeta<Namespace>>,
) -> Caches {
    Caches::from_objects(claims, volumes, classes, namespaces)
}

/// Namespace metadata as the namespace store holds it.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    PartialObjectMeta {
        types: None,
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        _phantom: Default::default(),
    }
}

/// Decodes a typed object from JSON; panics when it does not fit.
pub fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("fixture decodes")
}

/// A StorageClass of `provisioner`, annotated as the default class when `default`.
pub fn class(name: &str, provisioner: &str, default: bool) -> StorageClass {
    let mut value = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": provisioner,
    });
    if default {
        value["metadata"]["annotations"] =
            json!({"storageclass.kubernetes.io/is-default-class": "true"});
    }
    from_json(value)
}

/// A claim of `class` with the given access modes (Filesystem unless `block`).
pub fn claim(
    namespace: &str,
    name: &str,
    class: &str,
    modes: &[&str],
    block: bool,
) -> PersistentVolumeClaim {
    let mut value = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "accessModes": modes,
            "storageClassName": class,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    });
    if block {
        value["spec"]["volumeMode"] = json!("Block");
    }
    from_json(value)
}

/// The storage world of the router tests: namespace `app` with one claim per kind of storage,
/// and namespace `quiet` labelled with the opt-out.
pub fn storage_world(keys: &Keys) -> Caches {
    caches(
        vec![
            claim("app", "data", "longhorn", &["ReadWriteOnce"], false),
            claim("app", "shared", "longhorn", &["ReadWriteMany"], false),
            claim("app", "nfs-data", "nfs-csi", &["ReadWriteMany"], false),
            claim("app", "raw", "longhorn", &["ReadWriteOnce"], true),
            claim("app", "odd", "mystery", &["ReadWriteOnce"], false),
            claim("quiet", "data", "longhorn", &["ReadWriteOnce"], false),
        ],
        vec![],
        vec![
            class("longhorn", "driver.longhorn.io", true),
            class("nfs-csi", "nfs.csi.k8s.io", false),
            class("ebs", "ebs.csi.aws.com", false),
            class("mystery", "storage.example.com", false),
        ],
        vec![
            namespace("app", &[]),
            namespace("quiet", &[(keys.opt_out.as_str(), "true")]),
        ],
    )
}

/// State over `caches` with the built-in table, default keys and unregistered metrics.
pub fn state(caches: Caches) -> Arc<WebhookState> {
    let table = userns_labeler::config::TableState::channel(DriverTable::defaults());
    Arc::new(WebhookState {
        caches,
        table,
        keys: Keys::default(),
        metrics: WebhookMetrics::default(),
        nodes: Default::default(),
    })
}

/// A minimal pod: one container, no volumes.
pub fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
    })
}

/// Adds a volume to a pod (JSON).
pub fn with_volume(mut pod: Value, volume: Value) -> Value {
    let volumes = pod["spec"]
        .as_object_mut()
        .expect("spec")
        .entry("volumes")
        .or_insert_with(|| json!([]));
    volumes.as_array_mut().expect("volumes").push(volume);
    pod
}

/// A pod volume (JSON) named `volume` that mounts the claim `claim`.
pub fn claim_volume(volume: &str, claim: &str) -> Value {
    json!({"name": volume, "persistentVolumeClaim": {"claimName": claim}})
}

/// An AdmissionReview v1 for `operation` (CREATE, UPDATE, …) of `object` in `namespace`.
pub fn review(operation: &str, namespace: &str, object: &Value) -> Value {
    let kind = object["kind"].as_str().unwrap_or("Pod");
    let resource = format!("{}s", kind.to_ascii_lowercase());
    let (group, version) = match object["apiVersion"]
        .as_str()
        .unwrap_or("v1")
        .split_once('/')
    {
        Some((group, version)) => (group.to_string(), version.to_string()),
        None => (
            String::new(),
            object["apiVersion"].as_str().unwrap_or("v1").to_string(),
        ),
    };
    let mut object = object.clone();
    object["metadata"]["namespace"] = json!(namespace);
    let old_object = if operation == "CREATE" {
        Value::Null
    } else {
        object.clone()
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": object["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "admin", "groups": ["system:masters", "system:authenticated"]},
            "object": object,
            "oldObject": old_object,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    })
}

/// The response part of a returned AdmissionReview, decoded.
pub struct Answer {
    /// `response.uid`, the request's.
    pub uid: String,
    /// `response.allowed`.
    pub allowed: bool,
    /// `response.status.message`, empty when absent.
    pub message: String,
    /// The decoded JSON Patch, when the response has one.
    pub patch: Option<Patch>,
}

/// Decodes a returned AdmissionReview as the API server does: `apiVersion`, `kind`, and
/// `response` with `uid`, `allowed`, `status.message` and, when patched, `patchType: JSONPatch`
/// and the patch as base64 (Go's encoding of `[]byte`).
pub fn answer(body: &[u8]) -> Answer {
    use base64::Engine;
    let review: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("response is JSON ({e}): {}", String::from_utf8_lossy(body)));
    assert_eq!(review["kind"], "AdmissionReview", "{review}");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review}");
    let response = &review["response"];
    assert!(response.is_object(), "the review has a response: {review}");
    let patch = response.get("patch").map(|patch| {
        assert_eq!(response["patchType"], "JSONPatch", "{review}");
        let encoded = patch.as_str().expect("the patch is a base64 string");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("the patch is valid base64");
        serde_json::from_slice(&bytes).expect("the patch is a JSON Patch")
    });
    if patch.is_none() {
        assert_eq!(response.get("patchType"), None, "{review}");
    }
    Answer {
        uid: response["uid"].as_str().expect("a uid").to_string(),
        allowed: response["allowed"].as_bool().expect("allowed"),
        message: response["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        patch,
    }
}

/// The object after applying `patch` (a JSON Patch that must apply cleanly).
pub fn patched(original: &Value, patch: &Patch) -> Value {
    let mut object = original.clone();
    json_patch::patch(&mut object, patch)
        .unwrap_or_else(|e| panic!("the patch {patch} does not apply to {original}: {e}"));
    object
}

/// The pod's annotation `key`, if any.
pub fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod["metadata"]["annotations"][key].as_str()
}

/// Decodes a pod from JSON.
pub fn decode_pod(value: &Value) -> Pod {
    from_json(value.clone())
}

/// A minimal HTTPS client (rustls with ring, HTTP/1.1 keep-alive) for the TLS tests and the
/// load benchmark.
pub mod https {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::body::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http1::SendRequest;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, RootCertStore};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    /// Any error of connecting or of a request.
    pub type Error = Box<dyn std::error::Error + Send + Sync>;

    /// A client configuration trusting only `ca_pem`.
    pub fn trusting(ca_pem: &str) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// One keep-alive HTTP/1.1 connection over TLS, verifying the server as `server_name`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> Result<SendRequest<Full<Bytes>>, Error> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_string())?;
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// POSTs `body` to `path`; returns the status and the response body.
    pub async fn post(
        sender: &mut SendRequest<Full<Bytes>>,
        path: &str,
        body: Bytes,
    ) -> Result<(http::StatusCode, Bytes), Error> {
        sender.ready().await?;
        let request = http::Request::post(path)
            .header("host", "webhook")
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}
