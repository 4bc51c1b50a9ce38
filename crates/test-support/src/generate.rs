//! Generated clusters for scale tests and benchmarks: pods and the claims they mount, either
//! as `kubectl get pv,pvc,pods -A -o yaml` prints them (with the volumes the claims are bound
//! to; metadata with `managedFields`, owner references, the last-applied annotation;
//! `status`), or as one creates them.
//!
//! Each pod `i` mounts claim `i`, whose storage driver cycles through [`DRIVERS`]; so which
//! pods the webhook would enable follows from `i` alone ([`expected_enabled`]), without the
//! engine.
//!
//! Written as a `kind: List` (YAML or JSON, as kubectl prints it) or as a stream of YAML
//! documents. `scripts/generate-manifests.rs` (`cargo run --example generate-manifests`) prints
//! them.

use std::io::{self, Write};

use serde_json::{Value, json};

/// The claims' drivers, by `i % 4`, and whether the built-in table lets them be idmapped:
/// EBS (ext4 on a block device) yes, NFS no, Longhorn single-node yes, an unknown driver no
/// (`unknown` blocks).
pub const DRIVERS: [(&str, bool); 4] = [
    ("ebs.csi.aws.com", true),
    ("nfs.csi.k8s.io", false),
    ("driver.longhorn.io", true),
    ("example.com/mystery", false),
];

/// The namespace of object `i`: ten namespaces.
pub fn namespace(i: usize) -> String {
    format!("team-{}", i % 10)
}

/// Whether pod `i` would be enabled: its claim's driver supports idmap mounts, and every
/// seventh pod also asks for `hostNetwork`.
pub fn expected_enabled(i: usize) -> bool {
    DRIVERS[i % DRIVERS.len()].1 && !host_network(i)
}

fn host_network(i: usize) -> bool {
    i % 7 == 3
}

/// How objects are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// As `kubectl get -o yaml|json` prints them: server-set metadata, managedFields, status.
    Full,
    /// As one writes them to create them.
    Create,
}

fn managed_fields(manager: &str, body: Value) -> Value {
    json!([
        {"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": body,
         "manager": manager, "operation": "Update", "time": "2026-03-02T10:11:12Z"},
        {"apiVersion": "v1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:status": {"f:conditions": {".": {}, "k:{\"type\":\"Ready\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}}, "f:phase": {}}},
         "manager": "kubelet", "operation": "Update", "subresource": "status", "time": "2026-03-02T10:11:20Z"}
    ])
}

/// Claim `i`.
pub fn claim(i: usize, shape: Shape) -> Value {
    let (driver, _) = DRIVERS[i % DRIVERS.len()];
    let name = format!("data-{i}");
    let mut claim = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": namespace(i),
            "labels": {"app.kubernetes.io/name": format!("app-{i}"), "app.kubernetes.io/part-of": "scale"},
            "annotations": {
                "volume.kubernetes.io/storage-provisioner": driver,
                "volume.beta.kubernetes.io/storage-provisioner": driver,
            },
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "10Gi"}},
            "storageClassName": "",
            "volumeMode": "Filesystem",
        },
    });
    if shape == Shape::Full {
        let meta = &mut claim["metadata"];
        meta["uid"] = json!(format!("7d4c1a52-0000-4000-8000-{i:012}"));
        meta["resourceVersion"] = json!(format!("{}", 100_000 + i));
        meta["creationTimestamp"] = json!("2026-03-02T10:11:12Z");
        meta["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
        meta["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
        meta["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
        meta["annotations"]["volume.kubernetes.io/selected-node"] =
            json!(format!("node-{}.eu-west-1.compute.internal", i % 50));
        meta["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json!(format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"PersistentVolumeClaim\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{}\"}},\"spec\":{{\"accessModes\":[\"ReadWriteOnce\"],\"resources\":{{\"requests\":{{\"storage\":\"10Gi\"}}}}}}}}\n",
            namespace(i)
        ));
        meta["managedFields"] = managed_fields(
            "kube-controller-manager",
            json!({"f:metadata": {"f:annotations": {"f:pv.kubernetes.io/bind-completed": {}, "f:pv.kubernetes.io/bound-by-controller": {}, "f:volume.beta.kubernetes.io/storage-provisioner": {}, "f:volume.kubernetes.io/storage-provisioner": {}}},
                   "f:spec": {"f:volumeName": {}}}),
        );
        claim["spec"]["volumeName"] = json!(volume_name(i));
        claim["status"] = json!({
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "10Gi"},
            "phase": "Bound",
        });
    }
    claim
}

fn volume_name(i: usize) -> String {
    format!("pvc-7d4c1a52-0000-4000-8000-{i:012}")
}

/// The PersistentVolume claim `i` is bound to (full objects only: a created claim stays
/// unbound, as no controller runs).
pub fn volume(i: usize) -> Value {
    let (driver, _) = DRIVERS[i % DRIVERS.len()];
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name(i),
            "uid": format!("5e6f7a8b-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 300_000 + i),
            "creationTimestamp": "2026-03-02T10:11:13Z",
            "annotations": {"pv.kubernetes.io/provisioned-by": driver, "volume.kubernetes.io/provisioner-deletion-secret-name": "", "volume.kubernetes.io/provisioner-deletion-secret-namespace": ""},
            "finalizers": ["external-provisioner.volume.kubernetes.io/finalizer", "kubernetes.io/pv-protection"],
            "managedFields": managed_fields("csi-provisioner", json!({"f:metadata": {"f:annotations": {".": {}, "f:pv.kubernetes.io/provisioned-by": {}}}, "f:spec": {"f:accessModes": {}, "f:capacity": {}, "f:claimRef": {}, "f:csi": {}, "f:persistentVolumeReclaimPolicy": {}, "f:volumeMode": {}}})),
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "10Gi"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": format!("data-{i}"), "namespace": namespace(i), "resourceVersion": format!("{}", 100_000 + i), "uid": format!("7d4c1a52-0000-4000-8000-{i:012}")},
            "csi": {"driver": driver, "fsType": "ext4", "volumeHandle": format!("vol-{i:016x}"), "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": format!("1772444400000-{}-{driver}", i % 97)}},
            "persistentVolumeReclaimPolicy": "Delete",
            "volumeMode": "Filesystem",
        },
        "status": {"lastPhaseTransitionTime": "2026-03-02T10:11:13Z", "phase": "Bound"},
    })
}

/// Pod `i`, mounting claim `i`.
pub fn pod(i: usize, shape: Shape) -> Value {
    let name = format!("app-{i}");
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace(i),
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "scale"},
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example.com/team/app:1.2.3",
                "args": ["--listen=:8080", "--data=/data"],
                "env": [
                    {"name": "APP_MODE", "value": "production"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                ],
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "50m", "memory": "128Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "runAsUser": 1000},
                "volumeMounts": [{"mountPath": "/data", "name": "data"}],
            }],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": format!("data-{i}")}},
            ],
        },
    });
    if host_network(i) {
        pod["spec"]["hostNetwork"] = json!(true);
    }
    if shape == Shape::Full {
        let meta = &mut pod["metadata"];
        meta["uid"] = json!(format!("3f2a9b10-0000-4000-8000-{i:012}"));
        meta["resourceVersion"] = json!(format!("{}", 200_000 + i));
        meta["creationTimestamp"] = json!("2026-03-02T10:11:15Z");
        meta["generateName"] = json!(format!("app-{i}-7c9d5b6f4d-"));
        meta["labels"]["pod-template-hash"] = json!("7c9d5b6f4d");
        meta["annotations"] = json!({"kubectl.kubernetes.io/restartedAt": "2026-03-01T09:00:00Z"});
        meta["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "blockOwnerDeletion": true, "controller": true,
            "kind": "ReplicaSet", "name": format!("app-{i}-7c9d5b6f4d"),
            "uid": format!("9b8a7c6d-0000-4000-8000-{i:012}"),
        }]);
        meta["managedFields"] = managed_fields(
            "kube-controller-manager",
            json!({"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app.kubernetes.io/name": {}, "f:pod-template-hash": {}}, "f:ownerReferences": {".": {}, "k:{\"uid\":\"9b8a7c6d\"}": {}}},
                   "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:args": {}, "f:env": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:ports": {}, "f:resources": {}, "f:securityContext": {}, "f:terminationMessagePath": {}, "f:volumeMounts": {}}},
                              "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}, "f:volumes": {}}}),
        );
        let spec = &mut pod["spec"];
        let container = &mut spec["containers"][0];
        container["imagePullPolicy"] = json!("IfNotPresent");
        container["terminationMessagePath"] = json!("/dev/termination-log");
        container["terminationMessagePolicy"] = json!("File");
        container["volumeMounts"]
            .as_array_mut()
            .expect("mounts")
            .push(json!({"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": "kube-api-access-x7k2q", "readOnly": true}));
        spec["volumes"].as_array_mut().expect("volumes").push(json!({
            "name": "kube-api-access-x7k2q",
            "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"items": [{"key": "ca.crt", "path": "ca.crt"}], "name": "kube-root-ca.crt"}},
                {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}},
            ]},
        }));
        spec["dnsPolicy"] = json!("ClusterFirst");
        spec["enableServiceLinks"] = json!(true);
        spec["nodeName"] = json!(format!("node-{}.eu-west-1.compute.internal", i % 50));
        spec["preemptionPolicy"] = json!("PreemptLowerPriority");
        spec["priority"] = json!(0);
        spec["restartPolicy"] = json!("Always");
        spec["schedulerName"] = json!("default-scheduler");
        spec["securityContext"] = json!({"fsGroup": 1000});
        spec["serviceAccount"] = json!("default");
        spec["serviceAccountName"] = json!("default");
        spec["terminationGracePeriodSeconds"] = json!(30);
        spec["tolerations"] = json!([
            {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
            {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300},
        ]);
        let condition = |t: &str| json!({"lastProbeTime": null, "lastTransitionTime": "2026-03-02T10:11:25Z", "status": "True", "type": t});
        pod["status"] = json!({
            "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"), condition("ContainersReady"), condition("PodScheduled")],
            "containerStatuses": [{
                "containerID": format!("containerd://{:064x}", i),
                "image": "registry.example.com/team/app:1.2.3",
                "imageID": "registry.example.com/team/app@sha256:4f6a2b3c9d8e7f1a0b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607182",
                "lastState": {}, "name": "app", "ready": true, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": "2026-03-02T10:11:24Z"}},
                "volumeMounts": [{"mountPath": "/data", "name": "data"}],
            }],
            "hostIP": format!("10.0.{}.{}", i % 50, 10), "phase": "Running",
            "podIP": format!("10.244.{}.{}", (i / 250) % 250, i % 250),
            "qosClass": "Burstable", "startTime": "2026-03-02T10:11:15Z",
        });
    }
    pod
}

/// For `i` in `0..pods`: claim `i`, its volume (full objects only, as in `kubectl get
/// pv,pvc,pods -A -o yaml`), pod `i`.
pub fn objects(pods: usize, shape: Shape) -> impl Iterator<Item = Value> {
    (0..pods).flat_map(move |i| match shape {
        Shape::Full => vec![claim(i, shape), volume(i), pod(i, shape)],
        Shape::Create => vec![claim(i, shape), pod(i, shape)],
    })
}

/// Writes the objects as `kubectl get -o yaml` does: a `kind: List`, keys as given.
pub fn write_list_yaml(
    out: &mut impl Write,
    objects: impl Iterator<Item = Value>,
) -> io::Result<()> {
    writeln!(out, "apiVersion: v1\nitems:")?;
    for object in objects {
        let text = serde_saphyr::to_string(&object).map_err(io::Error::other)?;
        for (n, line) in text.lines().enumerate() {
            let prefix = if n == 0 { "- " } else { "  " };
            writeln!(out, "{prefix}{line}")?;
        }
    }
    writeln!(out, "kind: List\nmetadata:\n  resourceVersion: \"\"")
}

/// Writes the objects as `kubectl get -o json` does: a `kind: List`.
pub fn write_list_json(
    out: &mut impl Write,
    objects: impl Iterator<Item = Value>,
) -> io::Result<()> {
    write!(out, "{{\n    \"apiVersion\": \"v1\",\n    \"items\": [")?;
    for (n, object) in objects.enumerate() {
        if n > 0 {
            write!(out, ",")?;
        }
        writeln!(out)?;
        serde_json::to_writer_pretty(&mut *out, &object)?;
    }
    writeln!(
        out,
        "\n    ],\n    \"kind\": \"List\",\n    \"metadata\": {{\"resourceVersion\": \"\"}}\n}}"
    )
}

/// Writes the objects as a stream of YAML documents, as `helm template` prints them.
pub fn write_stream_yaml(
    out: &mut impl Write,
    objects: impl Iterator<Item = Value>,
) -> io::Result<()> {
    for object in objects {
        writeln!(out, "---")?;
        let text = serde_saphyr::to_string(&object).map_err(io::Error::other)?;
        out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            writeln!(out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pod_is_a_few_kilobytes_as_kubectl_prints_it() {
        let mut out = Vec::new();
        write_list_yaml(&mut out, [pod(1, Shape::Full)].into_iter()).unwrap();
        assert!((3_000..8_000).contains(&out.len()), "{}", out.len());
        let text = String::from_utf8(out).unwrap();
        let parsed: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(parsed["items"][0], pod(1, Shape::Full));
    }

    #[test]
    fn the_three_shapes_hold_the_same_objects() {
        let objects = || objects(3, Shape::Full);
        let mut yaml = Vec::new();
        write_list_yaml(&mut yaml, objects()).unwrap();
        let mut json = Vec::new();
        write_list_json(&mut json, objects()).unwrap();
        let mut stream = Vec::new();
        write_stream_yaml(&mut stream, objects()).unwrap();
        let from_yaml: Value = serde_saphyr::from_slice(&yaml).unwrap();
        let from_json: Value = serde_json::from_slice(&json).unwrap();
        let from_stream: Vec<Value> = serde_saphyr::from_slice_multiple(&stream).unwrap();
        let expected: Vec<Value> = objects().collect();
        assert_eq!(from_yaml["items"].as_array().unwrap(), &expected);
        assert_eq!(from_json["items"].as_array().unwrap(), &expected);
        assert_eq!(from_stream, expected);
    }
}
