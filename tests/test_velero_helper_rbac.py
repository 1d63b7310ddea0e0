"""A file-system volume restore brings the backup's pods in as helpers and deletes them once their
data is in. Without the permission to delete pods in the restore's namespaces (a mapped one has
no klb-flow-runner-apps RoleBinding unless someone made it) Velero wrote the claims and the
helpers, their removal was refused, and the restore stopped half done. The permission is asked
first, as a dry-run delete, and a missing one refused before anything changes."""

from __future__ import annotations

import pytest

from flows.backup import backup_all, backup_component
from flows.scenarios import full_cluster_restore
from sandbox.k8s_emulator.snapshot import PODS, RESTORES
from tasks.components import volumes
from tasks.components.kubernetes import api as kube
from tasks.errors import ConfigurationError
from tests.k8s_helpers import k8s, seed_namespaces


def test_the_emulator_answers_a_dry_run_delete_as_the_api_server_and_deletes_nothing(kube_api, ctl):
    """`DELETE ?dryRun=All`: authorized (403 before 404), the object answered, nothing deleted."""
    (ns,) = seed_namespaces(ctl, "dry")
    k = k8s(kube_api)
    (pod, *_) = [p["metadata"]["name"] for p in ctl.store.list(PODS, ns)]

    answered = k.core.delete_namespaced_pod(pod, ns, dry_run="All")

    assert answered.metadata.name == pod
    assert not ctl.store.get(PODS, ns, pod)["metadata"].get("deletionTimestamp")
    with pytest.raises(kube.NotFound):
        k.call("delete pod", k.core.delete_namespaced_pod, "absent", ns, dry_run="All")
    ctl.deny("delete", "pods")
    with pytest.raises(ConfigurationError, match="forbidden by RBAC"):
        k.call("delete pod", k.core.delete_namespaced_pod, "absent", ns, dry_run="All")


@pytest.fixture
def lam(ctl) -> str:
    (ns,) = seed_namespaces(ctl, "helpers")
    return ns


def test_a_file_system_restore_into_a_mapped_namespace_without_pod_delete_changes_nothing(
    prefect_server, kube_api, ctl, local_store, lam
):
    target = kube_api.velero_target(include_namespaces=[lam], default_volumes_to_fs_backup=True)
    store = local_store()
    result = backup_component("volumes", target=target, store=store)
    ctl.deny("delete", "pods")  # as in a namespace where klb-flow-runner-apps is not bound
    before = kube_api.state()
    into = f"{lam}-copy"
    options = volumes.RestoreOptions(namespaces=[lam], namespace_mapping={lam: into})
    from tasks.storage.catalog import get_backup

    with pytest.raises(ConfigurationError) as refused:
        volumes.restore(target, get_backup(store, result.id), store, options)

    said = str(refused.value)
    assert "delete pods" in said and f"klb-flow-runner-apps in {into}" in said
    assert kube_api.state() == before and not ctl.store.list(RESTORES)


def test_the_volumes_step_of_a_full_restore_asks_before_it_deletes_a_claim(
    prefect_server, kube_api, ctl, local_store, lam
):
    """The restore's own check came after the step had deleted the claims it replaces."""
    target = kube_api.velero_target(include_namespaces=[lam], default_volumes_to_fs_backup=True)
    store = local_store()
    targets = {"kubernetes": target, "volumes": target}
    backup_all(components=["kubernetes", "volumes"], targets=targets, store=store)
    ctl.deny("delete", "pods")

    with pytest.raises(Exception, match=f"klb-flow-runner-apps in {lam}"):
        full_cluster_restore(targets=targets, store=store, dry_run=False)

    assert [p["name"] for p in kube.list_pvcs(k8s(kube_api), lam)] == ["data"]
    assert ctl.volumes[(lam, "data")] == f"{lam} volume v1"


@pytest.mark.parametrize(
    "verb, resource, said",
    [
        ("delete", "persistentvolumeclaims", "delete PVC"),
        ("patch", "deployments/scale", "scale deployment"),
        ("patch", "deployments", "annotate deployment"),
    ],
)
def test_data_corruption_asks_for_every_permission_it_needs_before_it_changes_anything(
    prefect_server, kube_api, ctl, local_store, lam, verb, resource, said
):
    """A missing verb was found mid-way: the apps scaled down (and back) or a claim about to go,
    a forensic backup taken, for a restore that could never be made."""
    from flows.scenarios import data_corruption

    target = kube_api.velero_target(include_namespaces=[lam])
    store = local_store()
    backup_component("volumes", target=target, store=store)
    ctl.deny(verb, resource)
    before, writes = kube_api.state(), len(ctl.writes)

    with pytest.raises(ConfigurationError, match=f"{said} .*forbidden by RBAC"):
        data_corruption(lam, target=target, store=store)

    assert kube_api.state() == before and len(ctl.writes) == writes  # no forensic backup either
