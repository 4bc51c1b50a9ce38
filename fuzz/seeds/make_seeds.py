#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/seeds/<target>/ (not committed: the
committed corpora under fuzz/corpus/ were minimised from these plus what the fuzzer found).

    python3 fuzz/seeds/make_seeds.py

admission_review, webhook_handler: AdmissionReviews of every pod of examples/ (and the pods the
examples' StatefulSets and Deployments would create), of the Kyverno test pods, of pods with
every volume source, the odd encodings of src/webhook/lean_tests.rs, and reviews the fast path
leaves to the full decoder; admission_review also the pods alone. driver_table: config/drivers.yaml and the tables of config/README.md.
manifests: examples/, the Kyverno test manifests, and a JSON List.
"""
import copy
import glob
import hashlib
import json
import os
import re
import shutil

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "fuzz", "seeds")


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def documents(path):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc is None:
                continue
            if isinstance(doc.get("items"), list):
                yield from doc["items"]
            else:
                yield doc


# Pods alone: admission_review also reads each input as the object of a fixed review.
POD_OBJECTS = []


def review(namespace, pod, operation="CREATE"):
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "7b0c0a4e-0d3f-4a41-9d1e-3f1d2a6b5c01",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": (pod.get("metadata") or {}).get("name", ""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "f0e1",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def reviews():
    pods = []
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml"))):
        for obj in documents(path):
            if obj.get("kind") == "Pod":
                pods.append(obj)
            template = (obj.get("spec") or {}).get("template")
            if isinstance(template, dict) and isinstance(template.get("spec"), dict):
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": copy.deepcopy(template.get("metadata") or {}),
                       "spec": copy.deepcopy(template["spec"])}
                pod["metadata"]["generateName"] = obj["metadata"]["name"] + "-"
                pod["metadata"]["namespace"] = obj["metadata"].get("namespace")
                pods.append(pod)
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "kyverno", "tests", "*", "*.yaml"))):
        for obj in documents(path):
            if obj.get("kind") == "Pod":
                obj = copy.deepcopy(obj)
                obj["metadata"]["namespace"] = "app"
                pods.append(obj)
    out = []
    for pod in pods:
        ns = (pod.get("metadata") or {}).get("namespace") or "default"
        out.append(compact(review(ns, pod)))
        POD_OBJECTS.append(compact(pod))

    # Every volume source of the proptests, against the claims of the fuzz world (namespace app).
    volumes = [
        {"name": "a", "persistentVolumeClaim": {"claimName": "rwo"}},
        {"name": "b", "persistentVolumeClaim": {"claimName": "rwx", "readOnly": True}},
        {"name": "c", "persistentVolumeClaim": {"claimName": "raw"}},
        {"name": "d", "persistentVolumeClaim": {"claimName": "odd"}},
        {"name": "e", "persistentVolumeClaim": {"claimName": "not-there"}},
        {"name": "f", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        {"name": "h", "configMap": {"name": "settings", "items": [{"key": "a", "path": "a"}]}},
        {"name": "i", "secret": {"secretName": "creds", "defaultMode": 256}},
        {"name": "j", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
        {"name": "l", "hostPath": {"path": "/dev/ttyUSB0"}},
        {"name": "m", "hostPath": {"path": "/var/lib/data", "type": "Directory"}},
        {"name": "o", "nfs": {"server": "nas", "path": "/export"}},
        {"name": "p", "csi": {"driver": "driver.longhorn.io", "fsType": "ext4"}},
        {"name": "q", "csi": {"driver": "nfs.csi.k8s.io", "volumeAttributes": {"server": "nas"}}},
        {"name": "s", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "ebs",
            "resources": {"requests": {"storage": "1Gi"}}}}}},
        {"name": "u", "ephemeral": {}},
        {"name": "v", "iscsi": {"targetPortal": "10.0.0.1:3260", "iqn": "iqn.x", "lun": 0,
                                "fsType": "xfs"}},
        {"name": "w", "image": {"reference": "registry.example.com/data:1"}},
        {"name": "z", "futureVolume": {"anything": [1, 2]}},
        {"name": "zz", "nfs": None, "azureFile": {"secretName": "s", "shareName": "x"}},
    ]
    container = {"name": "app", "image": "registry.example.com/app:1.0",
                 "securityContext": {"privileged": False, "runAsUser": 1000, "runAsGroup": 1000},
                 "volumeDevices": []}
    base = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "labels": {"app": "web"},
                         "annotations": {"team": "infra"}},
            "spec": {"containers": [container], "initContainers": [container],
                     "securityContext": {"runAsUser": 1000, "fsGroup": 2000,
                                         "supplementalGroups": [3000]},
                     "os": {"name": "linux"}, "resourceClaims": [],
                     "hostUsers": None, "hostNetwork": False, "hostPID": False, "hostIPC": False}}
    for volume in volumes:
        pod = copy.deepcopy(base)
        pod["spec"]["volumes"] = [volume]
        out.append(compact(review("app", pod)))
        POD_OBJECTS.append(compact(pod))
    everything = copy.deepcopy(base)
    everything["spec"]["volumes"] = volumes
    out.append(compact(review("app", everything)))
    POD_OBJECTS.append(compact(everything))
    for ns in ["quiet", "elsewhere"]:
        out.append(compact(review(ns, base)))
    custom = copy.deepcopy(base)
    custom["metadata"]["labels"]["security.example.com/opt-out"] = "true"
    custom["metadata"]["annotations"]["userns.io/decision"] = "enabled"
    out.append(compact(review("app", custom)))

    # Reviews the fast path leaves to the full decoder.
    plain = review("app", base)
    variants = []
    for pointer, value in [
        ("request/operation", "UPDATE"),
        ("request/operation", "DELETE"),
        ("request/kind/kind", "ConfigMap"),
        ("request/subResource", "binding"),
        ("request/object", None),
        ("request/oldObject", base),
        ("request", None),
        ("response", {"uid": "x", "allowed": True}),
        ("kind", "Pod"),
        ("apiVersion", "admission.k8s.io/v1beta1"),
        ("request/userInfo", "admin"),
        ("request/object/spec/volumes", [{"name": "v", "nfs": "nas"}]),
        ("request/object/spec/containers", "not a list"),
        ("request/object/metadata/creationTimestamp", "not a time"),
    ]:
        v = copy.deepcopy(plain)
        *parents, key = pointer.split("/")
        node = v
        for p in parents:
            node = node[p]
        node[key] = value
        variants.append(compact(v))
    configmap = copy.deepcopy(plain)
    configmap["request"]["kind"] = {"group": "", "version": "v1", "kind": "ConfigMap"}
    configmap["request"]["object"] = {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "c"}, "data": {"a": "b"}}
    variants.append(compact(configmap))
    # The same with the object before the fields that say it is no pod CREATE (read as a pod).
    for operation in ["UPDATE", "DELETE"]:
        v = copy.deepcopy(plain)
        request = v["request"]
        request["operation"] = operation
        v["request"] = {"object": request.pop("object"), **request}
        variants.append(compact(v))
    out.extend(variants)

    # The odd encodings of lean_tests.rs: escapes and duplicate keys.
    def raw(spec, metadata):
        return ('{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":'
                '{"uid":"u\\"1","kind":{"group":"","version":"v1","kind":"Pod"},'
                '"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"app",'
                '"operation":"CREATE","userInfo":{},"object":{"metadata":' + metadata +
                ',"spec":' + spec + '}}}')
    containers = '"containers":[{"name":"a\\u0062c","image":"x"}]'
    out += [
        raw('{"\\u0068ostNetwork":true,' + containers + '}', '{"name":"p"}'),
        raw('{"hostNetwork":true,"hostNetwork":false,' + containers + '}', '{"name":"p"}'),
        raw('{' + containers + ',"containers":[{"name":"b","securityContext":{"privileged":true}}]}',
            '{"name":"p"}'),
        raw('{' + containers + '}',
            '{"name":"p","labels":{"userns.io\\/opt-out":"tr\\u0075e"}}'),
        raw('{' + containers + '}',
            '{"name":"p","labels":{"userns.io/opt-out":"true"},"labels":null}'),
        raw('{"hostUsers":false,' + containers + '}',
            '{"name":"p\\"q","annotations":{"userns.io/decision":"enabled"}}'),
        raw('{"hostUsers":null,' + containers + '}', '{"annotations":{}}'),
        "{ this is not json",
        "[1, 2, 3]",
    ]
    return out


def tables():
    out = [open(os.path.join(ROOT, "config", "drivers.yaml")).read()]
    readme = open(os.path.join(ROOT, "config", "README.md")).read()
    out += re.findall(r"```yaml\n(.*?)```", readme, re.S)
    out += [
        "replaceDefaults: true\nrules:\n  - driver: [a.example.com, b.example.com]\n"
        "    volumeMode: Filesystem\n    fsTypes: [ext4]\n    verdict: true\n    reason: r\n",
        "rules:\n  - driverRegex: '(('\n    verdict: false\n    reason: bad\n",
        "rules:\n  - driver: x\n    driverRegex: y\n    verdict: maybe\n",
        "rules: {}\n",
        "replaceDefaults: true\nrules: []\n",
    ]
    return out


def manifests():
    out = []
    paths = sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml")))
    paths += sorted(glob.glob(os.path.join(ROOT, "deploy", "kyverno", "tests", "*", "*.yaml")))
    for path in paths:
        out.append(open(path).read())
    objs = []
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml"))):
        objs += list(documents(path))
    out.append(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=1))
    return out


def main():
    for target in ["admission_review", "webhook_handler", "driver_table", "manifests"]:
        shutil.rmtree(os.path.join(OUT, target), ignore_errors=True)
    for r in reviews():
        write("admission_review", r)
        write("webhook_handler", r)
    for pod in POD_OBJECTS:
        write("admission_review", pod)
    for t in tables():
        write("driver_table", t)
    for m in manifests():
        write("manifests", m)
    for target in ["admission_review", "webhook_handler", "driver_table", "manifests"]:
        print(target, len(os.listdir(os.path.join(OUT, target))))


main()
