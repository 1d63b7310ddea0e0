"""Backup and restore against a real cluster with Velero (deselected by default).

Run: KLB_KUBECONFIG=~/.kube/config [KLB_KUBE_CONTEXT=...] [KLB_VELERO_NAMESPACE=velero]
     [KLB_VELERO_STORAGE_LOCATION=default] pytest -m real_cluster tests/test_velero_real_cluster.py
It creates a namespace `klb-test-<random>` with a ConfigMap and a Secret, backs it up through
Velero, restores it with namespaceMapping into `klb-test-<random>-restored`, checks the objects,
and deletes both namespaces (the Velero backup expires after 1 hour).
"""

from __future__ import annotations

import base64
import os
import secrets

import pytest

from blocks.kubernetes import KubernetesTarget, VeleroTarget
from tasks.components import kubernetes as velero
from tasks.components.kubernetes import api as kube
from tasks.storage.session import backup_session

pytestmark = pytest.mark.real_cluster


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
    return VeleroTarget(
        kube=KubernetesTarget(kubeconfig_path=path, context=os.environ.get("KLB_KUBE_CONTEXT")),
        namespace=os.environ.get("KLB_VELERO_NAMESPACE", "velero"),
        storage_location=os.environ.get("KLB_VELERO_STORAGE_LOCATION", "default"),
        snapshot_volumes=False,
        ttl_hours=1,
        backup_timeout_seconds=900,
        restore_timeout_seconds=900,
        poll_interval_seconds=float(os.environ.get("KLB_POLL_SECONDS", "2")),
    )


def test_backup_and_mapped_restore_on_a_real_cluster(real_target, local_store):
    k = kube.connect(real_target.kube)
    ns = f"klb-test-{secrets.token_hex(4)}"
    restored = f"{ns}-restored"
    store = local_store()
    kube.create_namespace(k, ns, {"klb.io/test": "true"})
    try:
        k.call(
            "seed", k.core.create_namespaced_config_map, ns, {"metadata": {"name": "cfg"}, "data": {"a": "1"}}
        )
        k.call(
            "seed",
            k.core.create_namespaced_secret,
            ns,
            {"metadata": {"name": "pw"}, "data": {"p": base64.b64encode(b"x").decode()}},
        )
        target = real_target.model_copy(update={"include_namespaces": [ns]})
        with backup_session(store, "kubernetes") as session:
            velero.backup(target, session)
            session.commit()
        manifest = session.manifest
        assert manifest.engine["phase"] == "Completed"
        report = velero.restore(
            target, manifest, store, velero.RestoreOptions(namespaces=[ns], namespace_mapping={ns: restored})
        )
        assert report["phase"] == "Completed"
        assert k.core.read_namespaced_config_map("cfg", restored).data == {"a": "1"}
        assert k.core.read_namespaced_config_map("cfg", ns).data == {"a": "1"}
    finally:
        for name in (ns, restored):
            kube.delete_namespace(k, name)
