"""Every Kubernetes flow against a real cluster with Velero (marker real_cluster, deselected by
default). How to set one up (kind + Velero + MinIO): docs/kubernetes.md, "Tests on a real cluster".

Run: KLB_KUBECONFIG=~/.kube/config [KLB_KUBE_CONTEXT=...] [KLB_VELERO_NAMESPACE=velero]
     [KLB_VELERO_STORAGE_LOCATION=default] [KLB_STORAGE_CLASS=standard] [KLB_VOLUME_MODE=fs|snapshots]
     pytest -m real_cluster tests/test_velero_real_cluster.py
Each test makes its own `klb-test-<random>` namespace (a ConfigMap, a Secret, a NodePort Service,
a PVC and a Deployment whose pod writes a marker onto the volume), runs one flow, checks the
objects and the volume's content (read back through the pod), and deletes what it made (the
Velero backups expire after 1 hour). KLB_VOLUME_MODE picks file-system backup (node agent; the
default, works on kind) or snapshots (needs a CSI driver with a VolumeSnapshotClass).
"""

from __future__ import annotations

import base64
import os
import secrets
from datetime import UTC, datetime

import pytest

from blocks.kubernetes import KubernetesTarget, VeleroTarget
from tasks.components import kubernetes as velero
from tasks.components.kubernetes import api as kube

pytestmark = pytest.mark.real_cluster
MARKER = "/data/marker"


@pytest.fixture
def real_target() -> VeleroTarget:
    path = os.environ.get("KLB_KUBECONFIG")
    if not path:
        pytest.fail(
            "the real_cluster tests need KLB_KUBECONFIG: the path of a kubeconfig for a cluster with "
            "Velero installed (and optionally KLB_KUBE_CONTEXT, KLB_VELERO_NAMESPACE, "
            "KLB_VELERO_STORAGE_LOCATION). Without a cluster, deselect them: -m 'not real_cluster'",
            pytrace=False,
        )
    fs = os.environ.get("KLB_VOLUME_MODE", "fs") == "fs"
    return VeleroTarget(
        kube=KubernetesTarget(kubeconfig_path=path, context=os.environ.get("KLB_KUBE_CONTEXT")),
        namespace=os.environ.get("KLB_VELERO_NAMESPACE", "velero"),
        storage_location=os.environ.get("KLB_VELERO_STORAGE_LOCATION", "default"),
        snapshot_volumes=not fs,
        default_volumes_to_fs_backup=fs,
        ttl_hours=1,
        backup_timeout_seconds=900,
        restore_timeout_seconds=900,
        poll_interval_seconds=float(os.environ.get("KLB_POLL_SECONDS", "2")),
    )


@pytest.fixture
def k(real_target):
    return kube.connect(real_target.kube)


@pytest.fixture
def app(k, real_target):
    """A namespace like the product's, with data on a volume; deleted afterwards (with any
    `<ns>-*` namespace a test made)."""
    ns = f"klb-test-{secrets.token_hex(4)}"
    kube.create_namespace(k, ns, {"klb.io/test": "true"})
    seed(k, ns)
    yield ns
    for name in kube.list_namespaces(k):
        if name == ns or name.startswith(f"{ns}-"):
            kube.delete_namespace(k, name)


def seed(k, ns: str) -> None:
    core, apps = k.core, k.apps
    core.create_namespaced_config_map(ns, {"metadata": {"name": "settings"}, "data": {"mode": "prod"}})
    core.create_namespaced_secret(
        ns, {"metadata": {"name": "pw"}, "data": {"p": base64.b64encode(b"x").decode()}}
    )
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "api"},
            "spec": {"type": "NodePort", "selector": {"app": "api"}, "ports": [{"port": 80}]},
        },
    )
    spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}
    if os.environ.get("KLB_STORAGE_CLASS"):
        spec["storageClassName"] = os.environ["KLB_STORAGE_CLASS"]
    core.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "data"}, "spec": spec})
    pod = {
        "metadata": {"labels": {"app": "api"}},
        "spec": {
            "containers": [
                {
                    "name": "api",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", f"[ -f {MARKER} ] || echo {ns} > {MARKER}; sleep 1000000"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        },
    }
    body = {
        "metadata": {"name": "api", "labels": {"app": "api"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}}, "template": pod},
    }
    apps.create_namespaced_deployment(ns, body)
    wait_ready(k, ns)


def wait_ready(k, ns: str) -> None:
    kube.wait_for(
        lambda: (k.apps.read_namespaced_deployment("api", ns).status.ready_replicas or 0) >= 1,
        600,
        2,
        f"deployment api in {ns} to be ready",
    )


def marker(k, ns: str) -> str:
    """What the app's volume holds, read through its pod (exec), as an operator would."""
    from kubernetes.stream import stream

    wait_ready(k, ns)
    pod = next(
        p
        for p in k.core.list_namespaced_pod(ns, label_selector="app=api").items
        if p.status.phase == "Running"
    )
    out = stream(
        k.core.connect_get_namespaced_pod_exec,
        pod.metadata.name,
        ns,
        command=["cat", MARKER],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    return out.strip()


def write_marker(k, ns: str, text: str) -> None:
    from kubernetes.stream import stream

    pod = next(
        p
        for p in k.core.list_namespaced_pod(ns, label_selector="app=api").items
        if p.status.phase == "Running"
    )
    stream(
        k.core.connect_get_namespaced_pod_exec,
        pod.metadata.name,
        ns,
        command=["sh", "-c", f"echo {text} > {MARKER}"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )


def take(component: str, target, store):
    from flows.backup import backup_component

    return backup_component(component, target=target, store=store)


def test_backup_and_mapped_restore(prefect_server, real_target, app, k, local_store):
    store = local_store()
    target = real_target.model_copy(update={"include_namespaces": [app]})
    result = take("kubernetes", target, store)
    from flows.restore import restore_component

    copy = f"{app}-restored"
    report = restore_component(
        "kubernetes",
        result.id,
        target=target,
        store=store,
        options={"namespaces": [app], "namespace_mapping": {app: copy}},
    )
    assert report["phase"] == "Completed"
    assert k.core.read_namespaced_config_map("settings", copy).data == {"mode": "prod"}
    assert k.core.read_namespaced_service("api", copy).spec.ports[0].node_port  # a new one, allocated
    assert marker(k, copy) == app  # the data, through the restored pod


def test_namespace_corruption(prefect_server, real_target, app, k, local_store):
    from flows.scenarios import namespace_corruption

    store = local_store()
    target = real_target.model_copy(update={"include_namespaces": [app]})
    take("kubernetes", target, store)
    k.core.patch_namespaced_config_map("settings", app, {"data": {"mode": "corrupted"}})
    namespace_corruption(app, target=target, store=store)
    assert k.core.read_namespaced_config_map("settings", app).data == {"mode": "prod"}
    assert marker(k, app) == app


def test_data_corruption(prefect_server, real_target, app, k, local_store):
    from flows.scenarios import data_corruption

    store = local_store()
    target = real_target.model_copy(update={"include_namespaces": [app]})
    take("volumes", target, store)
    write_marker(k, app, "corrupted")
    report = data_corruption(app, target=target, store=store)
    assert report["replicas_restored"] == {"api": 1}
    assert marker(k, app) == app


def test_partial_restore_of_one_object(prefect_server, real_target, app, k, local_store):
    from flows.scenarios import partial_restore

    store = local_store()
    target = real_target.model_copy(update={"include_namespaces": [app]})
    result = take("kubernetes", target, store)
    k.core.delete_namespaced_service("api", app)
    report = partial_restore(
        result.id, [app], resources=["services"], names=["api"], target=target, store=store
    )
    assert report["restored_objects"] == [f"{app}/services/api"]
    assert k.core.read_namespaced_service("api", app).spec.ports[0].node_port


def test_drill(prefect_server, real_target, app, k, local_store):
    store = local_store()
    target = real_target.model_copy(update={"include_namespaces": [app]})
    result = take("kubernetes", target, store)
    from tasks.storage.catalog import get_backup

    report = velero.drill(target, get_backup(store, result.id), store, "rc" + secrets.token_hex(3))
    assert report["verified"] is True
    assert not [n for n in kube.list_namespaces(k) if n.startswith("restore-drill-rc")]


def test_pitr_kubernetes(prefect_server, real_target, app, k, local_store):
    from flows.pitr import pitr_kubernetes

    store = local_store()
    target = real_target.model_copy(update={"include_namespaces": [app]})
    before = take("kubernetes", target, store)
    at = datetime.now(UTC)
    k.core.patch_namespaced_config_map("settings", app, {"data": {"mode": "later"}})
    take("kubernetes", target, store)
    result = pitr_kubernetes(at, target=target, store=store, options={"existing_resource_policy": "update"})
    assert result["backup_id"] == before.id
    assert k.core.read_namespaced_config_map("settings", app).data == {"mode": "prod"}


def test_full_cluster_restore(prefect_server, real_target, app, k, local_store):
    from flows.backup import backup_all
    from flows.scenarios import full_cluster_restore

    store = local_store()
    target = real_target.model_copy(update={"include_namespaces": [app]})
    targets = {"kubernetes": target, "volumes": target}
    backup_all(components=["kubernetes", "volumes"], targets=targets, store=store)
    kube.delete_namespace(k, app)
    full_cluster_restore(targets=targets, store=store, dry_run=False)
    assert k.core.read_namespaced_config_map("settings", app).data == {"mode": "prod"}
    assert marker(k, app) == app


def test_cancel_deletes_the_backup(real_target, app, k, local_store):
    store = local_store()
    target = real_target.model_copy(update={"include_namespaces": [app]})
    from tasks.storage.session import backup_session

    with backup_session(store, "kubernetes") as session:
        velero.backup(target, session)
        session.commit()
    name = session.manifest.engine["velero_backup"]
    assert velero.cancel_backup(target, name, timeout=300)["deleted"] is True
