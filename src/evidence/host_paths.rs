//! The labeler-owned ConfigMap of inline hostPath evidence (default
//! `userns-labeler-idmap-evidence`, in the labeler's namespace): one data entry per host path
//! a node could not idmap-mount, keyed `host-path.<hash>`, its value the JSON `Evidence` with
//! the `path`. Every replica watches it ([`watch`]) for the webhook, which skips the next pod
//! with that hostPath (or a path below it); the leader adds entries ([`record`]) with a JSON
//! merge patch, which never removes what is there. The operator clears an entry by removing its
//! key (`kubectl edit`), or all of them by deleting the ConfigMap.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::capability::evidence::{Evidence, HostPathEvidence, host_path_key};
use crate::controller::reconcile::FIELD_MANAGER;

/// At most this many host paths are recorded (an entry is well under 1 KiB; a ConfigMap holds
/// at most 1 MiB).
pub const MAX_HOST_PATHS: usize = 256;

/// Where the records are kept.
#[derive(Clone, Debug)]
pub struct RecordsConfigMap {
    pub namespace: String,
    pub name: String,
}

/// Starts following the ConfigMap. Returns the records (empty until it is read) and the watch
/// loop, which the caller runs until shutdown.
pub fn watch(
    client: Client,
    at: RecordsConfigMap,
) -> (
    watch::Receiver<Arc<HostPathEvidence>>,
    impl Future<Output = ()> + Send + use<>,
) {
    let (sender, receiver) = watch::channel(Arc::new(HostPathEvidence::default()));
    let run = async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &at.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", at.name));
        let stream = watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        let mut seen_in_list = false;
        while let Some(event) = stream.next().await {
            let records = match event {
                Ok(watcher::Event::Init) => {
                    seen_in_list = false;
                    continue;
                }
                Ok(watcher::Event::InitApply(cm)) => {
                    seen_in_list = true;
                    records_of(&cm)
                }
                Ok(watcher::Event::Apply(cm)) => records_of(&cm),
                Ok(watcher::Event::InitDone) if seen_in_list => continue,
                Ok(watcher::Event::InitDone | watcher::Event::Delete(_)) => {
                    HostPathEvidence::default()
                }
                Err(e) => {
                    warn!(error = %e, config_map = %at.name, "evidence ConfigMap watch error; retrying with backoff");
                    continue;
                }
            };
            if **sender.borrow() != records {
                info!(config_map = %at.name, host_paths = records.len(), "hostPath evidence updated");
                sender.send_replace(Arc::new(records));
            }
        }
    };
    (receiver, run)
}

fn records_of(config_map: &ConfigMap) -> HostPathEvidence {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    HostPathEvidence::from_data(config_map.data.as_ref().unwrap_or(&EMPTY))
}

/// What [`record`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    Added,
    AlreadyThere,
    Full,
}

/// Adds `evidence` (which names its `path`) to the ConfigMap, creating it when missing, unless
/// its path is already recorded or [`MAX_HOST_PATHS`] are.
pub async fn record(
    client: &Client,
    at: &RecordsConfigMap,
    current: &HostPathEvidence,
    evidence: &Evidence,
) -> Result<Recorded, kube::Error> {
    let Some(path) = evidence.path.as_deref() else {
        return Ok(Recorded::AlreadyThere);
    };
    if current.lookup(path).is_some() {
        return Ok(Recorded::AlreadyThere);
    }
    if current.len() >= MAX_HOST_PATHS {
        return Ok(Recorded::Full);
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &at.namespace);
    let key = host_path_key(path);
    let patch = json!({"data": {key.clone(): evidence.to_json()}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    match api.patch(&at.name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => return Ok(Recorded::Added),
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => return Err(e),
    }
    let config_map: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": at.name,
            "namespace": at.namespace,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
            "annotations": {"description": "Host paths a node could not idmap-mount, recorded by userns-labeler from the runtime's errors; the webhook leaves pods with these hostPaths as written. Remove a key to clear it."},
        },
        "data": {key: evidence.to_json()},
    }))
    .expect("a ConfigMap");
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    };
    match api.create(&params, &config_map).await {
        Ok(_) => Ok(Recorded::Added),
        // Created by another write in between: add to it.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            };
            api.patch(&at.name, &params, &Patch::Merge(&patch)).await?;
            Ok(Recorded::Added)
        }
        Err(e) => Err(e),
    }
}
