//! The report's reads: list calls (paged, all at once) and two ConfigMap gets. No watch, no
//! write. The permissions this needs are `deploy/report/rbac.yaml`.

use std::fmt::Debug;

use futures::try_join;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, ReplicationController,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::model::{ClusterObjects, ListedPod, ListedWorkload, Scope, TableInForce};
use crate::config::TableState;
use crate::config::{LastGood, ReloadOutcome, TableTracker};
use crate::keys::Keys;

/// Objects per list page: the API server's answers stay a few MB each.
const PAGE_SIZE: u32 = 500;

/// A read the report could not make. Exit status 3.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "listing {what} is forbidden: {message}. The report needs get and list on pods, \
         persistentvolumeclaims, persistentvolumes, storageclasses, deployments, statefulsets, \
         daemonsets, replicasets, replicationcontrollers, jobs and cronjobs (and nodes and the \
         driver ConfigMaps, which it does without): see deploy/report/rbac.yaml"
    )]
    Forbidden { what: &'static str, message: String },
    #[error("listing {what}: {source}")]
    Api {
        what: &'static str,
        source: kube::Error,
    },
}

/// Whether an API error is a refusal (401 or 403) rather than a failure to reach the server.
fn refused(error: &kube::Error) -> Option<String> {
    match error {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
            Some(status.message.clone())
        }
        _ => None,
    }
}

/// Every object of a kind in the scope (cluster-scoped kinds: all), page by page, without
/// `managedFields`.
async fn list<K>(api: Api<K>, what: &'static str) -> Result<Vec<K>, FetchError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    list_map(api, what, |item| item).await
}

/// [`list`], each object turned into what is kept of it as its page arrives: a page's typed
/// objects are dropped before the next page is read.
async fn list_map<K, T>(
    api: Api<K>,
    what: &'static str,
    keep: impl Fn(K) -> T,
) -> Result<Vec<T>, FetchError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut params = ListParams::default().limit(PAGE_SIZE);
    let mut items = Vec::new();
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|source| match refused(&source) {
                Some(message) => FetchError::Forbidden { what, message },
                None => FetchError::Api { what, source },
            })?;
        items.extend(page.items.into_iter().map(|mut item| {
            item.managed_fields_mut().clear();
            keep(item)
        }));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(items),
        }
    }
}

fn scoped<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match scope {
        Scope::All => Api::all(client.clone()),
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
    }
}

/// Lists everything the report reads, all kinds at once.
pub async fn list_objects(
    client: &Client,
    scope: &Scope,
    keys: &Keys,
) -> Result<ClusterObjects, FetchError> {
    let nodes = async {
        match list(Api::<Node>::all(client.clone()), "nodes").await {
            Ok(nodes) => Ok(Some(nodes)),
            // The nodes section says it could not list them; nothing else depends on them.
            Err(FetchError::Forbidden { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let (
        pods,
        claims,
        volumes,
        classes,
        nodes,
        deployments,
        stateful_sets,
        daemon_sets,
        replica_sets,
        replication_controllers,
        jobs,
        cron_jobs,
    ) = try_join!(
        list_map(scoped::<Pod>(client, scope), "pods", |p| ListedPod::of(
            &p, keys
        )),
        list(
            scoped::<PersistentVolumeClaim>(client, scope),
            "persistentvolumeclaims"
        ),
        list(
            Api::<PersistentVolume>::all(client.clone()),
            "persistentvolumes"
        ),
        list(Api::<StorageClass>::all(client.clone()), "storageclasses"),
        nodes,
        list_map(
            scoped::<Deployment>(client, scope),
            "deployments",
            ListedWorkload::of_deployment
        ),
        list_map(
            scoped::<StatefulSet>(client, scope),
            "statefulsets",
            ListedWorkload::of_stateful_set
        ),
        list_map(
            scoped::<DaemonSet>(client, scope),
            "daemonsets",
            ListedWorkload::of_daemon_set
        ),
        list_map(
            scoped::<ReplicaSet>(client, scope),
            "replicasets",
            ListedWorkload::of_replica_set
        ),
        list_map(
            scoped::<ReplicationController>(client, scope),
            "replicationcontrollers",
            ListedWorkload::of_replication_controller
        ),
        list_map(scoped::<Job>(client, scope), "jobs", ListedWorkload::of_job),
        list_map(
            scoped::<CronJob>(client, scope),
            "cronjobs",
            ListedWorkload::of_cron_job
        ),
    )?;
    let workloads = [
        deployments,
        stateful_sets,
        daemon_sets,
        replica_sets,
        replication_controllers,
        jobs,
        cron_jobs,
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(ClusterObjects {
        pods,
        claims,
        volumes,
        classes,
        nodes,
        workloads,
    })
}

/// The driver table the labeler in the cluster has in force at start-up: its ConfigMap, else
/// the last good copy, else the built-in table (see the README's table of situations). A
/// ConfigMap the report may not read is said so, and the built-in table used.
pub async fn table_in_force(
    client: &Client,
    namespace: &str,
    name: &str,
    keys_prefix: &str,
) -> Result<TableInForce, FetchError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let copy_name = format!("{name}-last-good");
    let get = |name: String| {
        let api = api.clone();
        async move {
            match api.get_opt(&name).await {
                Ok(found) => Ok(Ok(found)),
                Err(e) => match refused(&e) {
                    Some(message) => Ok(Err(message)),
                    None => Err(FetchError::Api {
                        what: "the driver ConfigMap",
                        source: e,
                    }),
                },
            }
        }
    };
    let (operator, copy) = try_join!(get(name.to_string()), get(copy_name.clone()))?;
    let (operator, copy) = match (operator, copy) {
        (Ok(operator), Ok(copy)) => (operator, copy),
        (Err(message), _) | (_, Err(message)) => {
            return Ok(TableInForce::Table {
                table: crate::capability::DriverTable::defaults(),
                source: format!(
                    "the built-in table: ConfigMap {namespace}/{name} could not be read ({message})"
                ),
            });
        }
    };
    let (mut tracker, state) = TableTracker::new();
    tracker.set_last_good(copy.as_ref().and_then(|c| LastGood::of(c, keys_prefix)));
    let outcome = tracker.apply(operator.as_ref());
    let source = match &outcome {
        ReloadOutcome::Applied | ReloadOutcome::Unchanged => {
            format!("ConfigMap {namespace}/{name}")
        }
        ReloadOutcome::Defaults => {
            format!("the built-in table (no ConfigMap {namespace}/{name})")
        }
        ReloadOutcome::LastGood => format!(
            "the last good copy {namespace}/{copy_name} (ConfigMap {namespace}/{name} is missing)"
        ),
        ReloadOutcome::Invalid(e) => format!(
            "the last good copy {namespace}/{copy_name} (ConfigMap {namespace}/{name} is invalid: {e})"
        ),
        ReloadOutcome::Unusable(e) => e.to_string(),
    };
    let current = state.borrow().clone();
    Ok(match current {
        TableState::InForce(table) => TableInForce::Table { table, source },
        TableState::Unusable(reason) => TableInForce::Unusable {
            reason: reason.to_string(),
        },
        TableState::Loading => TableInForce::Table {
            table: crate::capability::DriverTable::defaults(),
            source,
        },
    })
}
