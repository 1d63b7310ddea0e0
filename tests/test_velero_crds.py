"""The fake Velero and custom resources (sandbox/k8s_emulator/velero_crds.py): a backup holds
the custom resources of its namespaces and their CRDs (backupCRD), a restore creates CRDs first,
and a custom resource whose CRD the cluster lacks is skipped with an info log only (Velero 1.12
and 1.13) or is an item error (Velero >= 1.14), as restore.go does."""

from __future__ import annotations

import secrets

import pytest

from sandbox.k8s_emulator import crds
from sandbox.k8s_emulator.snapshot import CONFIGMAPS, NAMESPACES
from sandbox.k8s_emulator.store import CRDS
from tests.k8s_helpers import install_knative_crd, seed_knative_service, seed_settings
from tests.test_velero_emulator import backup, restore

KSVC = ("serving.knative.dev/v1", "services")


@pytest.fixture
def kn(kube_api) -> str:
    """A namespace with a ConfigMap and a Knative Service (its CRD installed)."""
    ns = f"kn-{secrets.token_hex(3)}"
    install_knative_crd(kube_api.controller)
    seed_settings(kube_api.controller, ns)
    seed_knative_service(kube_api.controller, ns, "hello")
    return ns


def held(kube_api, bname: str) -> set[tuple[str, str]]:
    return {(r.group_resource, o["metadata"]["name"]) for r, o in kube_api.controller.snapshots[bname].items}


def ksvc_res(kube_api):
    return crds.by_path(kube_api.server.store).get(KSVC)


def test_a_backup_holds_the_custom_resources_and_their_crd_unless_cluster_resources_are_off(kube_api, kn):
    name, phase = backup(kube_api, kn)
    assert phase == "Completed"
    items = held(kube_api, name)
    assert ("services.serving.knative.dev", "hello") in items and ("configmaps", "settings") in items
    assert ("customresourcedefinitions.apiextensions.k8s.io", "services.serving.knative.dev") in items
    off, _ = backup(kube_api, kn, includeClusterResources=False)
    assert ("services.serving.knative.dev", "hello") in held(kube_api, off)
    assert not [i for i in held(kube_api, off) if i[0].startswith("customresourcedefinitions")]
    no_crds, _ = backup(kube_api, kn, excludedResources=["customresourcedefinitions"])
    assert not [i for i in held(kube_api, no_crds) if i[0].startswith("customresourcedefinitions")]


def test_a_restore_with_cluster_resources_brings_the_crd_back_first(kube_api, kn):
    name, _ = backup(kube_api, kn)
    store = kube_api.server.store
    _lose_crd_and_namespace(kube_api, kn)
    rname, done = restore(kube_api, name, includedNamespaces=[kn], includeClusterResources=True)
    assert done["status"]["phase"] == "Completed", done["status"]
    assert ksvc_res(kube_api) is not None
    svc = store.get(ksvc_res(kube_api), kn, "hello")
    assert svc["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/klb/hello:v1"
    assert svc["metadata"]["labels"]["velero.io/restore-name"] == rname


def _lose_crd_and_namespace(kube_api, ns: str) -> None:
    store = kube_api.server.store
    store.delete(CRDS, "", "services.serving.knative.dev")  # and with it the Knative Service
    store.delete(NAMESPACES, "", ns)
    kube_api.controller.settle(lambda: store.find(NAMESPACES, "", ns) is None)


def test_a_custom_resource_whose_crd_is_missing_is_skipped_silently_as_velero_1_12_does(kube_api, kn):
    """restore.go (before 00b986936): "Skipping restore of resource because it cannot be resolved
    via discovery", an info log and `continue`: the Restore is Completed with no warning."""
    name, _ = backup(kube_api, kn)
    _lose_crd_and_namespace(kube_api, kn)
    rname, done = restore(kube_api, name, includedNamespaces=[kn])  # CRDs are cluster-scoped: left out
    status = done["status"]
    assert status["phase"] == "Completed" and not status.get("warnings") and not status.get("errors")
    assert ksvc_res(kube_api) is None
    assert kube_api.server.store.find(CONFIGMAPS, kn, "settings") is not None
    logs = kube_api.controller.restore_logs[rname]
    assert any(
        "cannot be resolved via discovery" in line and "services.serving.knative.dev" in line for line in logs
    )


def test_from_velero_1_14_a_custom_resource_whose_crd_is_missing_is_an_item_error(kube_api, kn):
    name, _ = backup(kube_api, kn)
    _lose_crd_and_namespace(kube_api, kn)
    kube_api.controller.unresolved_mode = "error"
    _, done = restore(kube_api, name, includedNamespaces=[kn])
    assert done["status"]["phase"] == "PartiallyFailed" and done["status"]["errors"] == 1


def test_a_crd_in_the_cluster_is_kept_and_serves_the_restored_resource(kube_api, kn):
    """The target cluster has the CRD (the operator installed it): the CR comes back without
    cluster resources."""
    name, _ = backup(kube_api, kn)
    _lose_crd_and_namespace(kube_api, kn)
    install_knative_crd(kube_api.controller)
    _, done = restore(kube_api, name, includedNamespaces=[kn])
    assert done["status"]["phase"] == "Completed"
    assert kube_api.server.store.find(ksvc_res(kube_api), kn, "hello") is not None


def test_a_crds_short_name_selects_its_resource_in_backups_and_restores(kube_api, kn):
    """Velero resolves included/excluded resources through discovery, which lists the CRD's
    short names: 'ksvc' is Knative's Service, 'services' the core one."""
    only, _ = backup(kube_api, kn, includedResources=["ksvc"])
    items = held(kube_api, only)
    assert ("services.serving.knative.dev", "hello") in items and ("configmaps", "settings") not in items
    assert ("customresourcedefinitions.apiextensions.k8s.io", "services.serving.knative.dev") in items
    without, _ = backup(kube_api, kn, excludedResources=["ksvc"])
    assert ("services.serving.knative.dev", "hello") not in held(kube_api, without)
    core, _ = backup(kube_api, kn, includedResources=["services"])
    assert ("services.serving.knative.dev", "hello") not in held(kube_api, core)
    name, _ = backup(kube_api, kn)
    kube_api.server.store.delete(ksvc_res(kube_api), kn, "hello")
    _, done = restore(kube_api, name, includedNamespaces=[kn], includedResources=["ksvc"])
    assert done["status"]["progress"]["itemsRestored"] == 1
    assert kube_api.server.store.find(ksvc_res(kube_api), kn, "hello") is not None
