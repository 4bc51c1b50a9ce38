//! Smoke tests of the integration-test control plane: they go through a real
//! kube-apiserver (started by `userns_labeler_test_support::control_plane`) and
//! prove that its storage, defaulting and validation are what the tests run against.

use k8s_openapi::{
    api::{
        core::v1::{
            CSIPersistentVolumeSource, Container, PersistentVolume, PersistentVolumeClaim,
            PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PersistentVolumeSpec,
            Pod, PodSpec, Volume, VolumeResourceRequirements,
        },
        storage::v1::StorageClass,
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use userns_labeler_test_support::control_plane;

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

fn pod(name: &str, host_users: Option<bool>, host_network: Option<bool>) -> Pod {
    Pod {
        metadata: meta(name),
        spec: Some(PodSpec {
            host_users,
            host_network,
            containers: vec![Container {
                name: "main".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create<K>(api: &Api<K>, object: &K) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), object)
        .await
        .unwrap_or_else(|e| panic!("creating {object:?}: {e}"))
}

#[tokio::test]
async fn api_server_reports_the_version_under_test() {
    let cp = control_plane::shared();
    let _logs = cp.logs_on_failure();
    let info = cp
        .client()
        .await
        .apiserver_version()
        .await
        .expect("GET /version");
    if cp.is_external() {
        eprintln!("external cluster reports {}", info.git_version);
    } else {
        assert_eq!(
            info.git_version,
            cp.version(),
            "/version of the local kube-apiserver"
        );
    }
}

#[tokio::test]
async fn storage_class_pv_pvc_and_pod_are_stored_and_read_back() {
    let cp = control_plane::shared();
    let client: Client = cp.client().await;
    let ns = cp.namespace("smoke-storage").await;

    let class_name = format!("{ns}-class");
    let classes: Api<StorageClass> = Api::all(client.clone());
    create(
        &classes,
        &StorageClass {
            metadata: meta(&class_name),
            provisioner: "smoke.csi.example.com".into(),
            volume_binding_mode: Some("WaitForFirstConsumer".into()),
            ..Default::default()
        },
    )
    .await;

    let pv_name = format!("{ns}-pv");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    create(
        &pvs,
        &PersistentVolume {
            metadata: meta(&pv_name),
            spec: Some(PersistentVolumeSpec {
                capacity: Some([("storage".to_owned(), Quantity("1Gi".into()))].into()),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: Some(class_name.clone()),
                csi: Some(CSIPersistentVolumeSource {
                    driver: "smoke.csi.example.com".into(),
                    volume_handle: pv_name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    create(
        &pvcs,
        &PersistentVolumeClaim {
            metadata: meta("data"),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: Some(class_name.clone()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_owned(), Quantity("1Gi".into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;

    let mut with_volume = pod("uses-data", None, None);
    let spec = with_volume.spec.as_mut().unwrap();
    spec.volumes = Some(vec![Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: "data".into(),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create(&pods, &with_volume).await;

    let class = classes.get(&class_name).await.expect("get StorageClass");
    assert_eq!(class.provisioner, "smoke.csi.example.com");
    assert_eq!(
        class.reclaim_policy.as_deref(),
        Some("Delete"),
        "the API server defaults reclaimPolicy"
    );
    let pv = pvs.get(&pv_name).await.expect("get PV");
    let pv_spec = pv.spec.expect("PV spec");
    assert_eq!(
        pv_spec.storage_class_name.as_deref(),
        Some(class_name.as_str())
    );
    assert_eq!(
        pv_spec.csi.expect("csi source").driver,
        "smoke.csi.example.com"
    );
    assert_eq!(
        pv_spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Retain"),
        "the API server defaults a static PV's reclaim policy"
    );
    let pvc = pvcs.get("data").await.expect("get PVC");
    assert_eq!(
        pvc.spec.and_then(|s| s.storage_class_name).as_deref(),
        Some(class_name.as_str())
    );
    let stored = pods.get("uses-data").await.expect("get Pod");
    let volumes = stored.spec.and_then(|s| s.volumes).expect("pod volumes");
    assert_eq!(
        volumes[0]
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some("data")
    );
    assert_eq!(
        stored.status.and_then(|s| s.phase).as_deref(),
        Some("Pending"),
        "no scheduler or kubelet runs, so pods stay Pending"
    );
}

#[tokio::test]
async fn pod_with_host_users_false_is_persisted_with_the_field_intact() {
    let cp = control_plane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("smoke-userns").await;
    let pods: Api<Pod> = Api::namespaced(client, &ns);

    let created = create(&pods, &pod("userns", Some(false), None)).await;
    assert_eq!(
        created.spec.as_ref().and_then(|s| s.host_users),
        Some(false)
    );

    let stored = pods.get("userns").await.expect("get Pod");
    assert_eq!(
        stored.spec.and_then(|s| s.host_users),
        Some(false),
        "hostUsers: false must survive the round trip through etcd \
         (an API server without user namespace support drops it)"
    );
}

#[tokio::test]
async fn api_server_rejects_host_users_false_with_host_network() {
    let cp = control_plane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("smoke-reject").await;
    let pods: Api<Pod> = Api::namespaced(client, &ns);

    let result = pods
        .create(
            &PostParams::default(),
            &pod("userns-hostnet", Some(false), Some(true)),
        )
        .await;
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "expected 422 Invalid, got {status:?}");
            assert_eq!(status.reason, "Invalid", "{status:?}");
            // 1.33 says "spec.hostNetwork: Forbidden: when `pod.Spec.HostUsers`
            // is false"; newer releases spell the field "hostUsers".
            let message = status.message.to_ascii_lowercase();
            assert!(
                message.contains("hostusers") && message.contains("hostnetwork"),
                "the rejection should name hostUsers and hostNetwork: {}",
                status.message
            );
        }
        Ok(pod) => {
            panic!("the API server accepted hostUsers: false with hostNetwork: true: {pod:?}")
        }
        Err(other) => panic!("expected a 422 from the API server, got {other}"),
    }
    assert!(
        pods.get_opt("userns-hostnet")
            .await
            .expect("get Pod")
            .is_none(),
        "the rejected pod must not exist"
    );
}
