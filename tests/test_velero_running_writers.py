"""Claims restored with their data while a pod that quiescing does not stop still mounts them.
Quiesce scales the namespace's Deployments to 0; a bare pod, or one of a StatefulSet, keeps
running: its claim, deleted, stayed Terminating (pvc-protection) until the flow timed out with
the apps scaled down, and restored, would be written under a running writer. Such a restore is
refused before anything changes, naming the claim and the pods."""

from __future__ import annotations

import pytest

from flows.backup import backup_all, backup_component
from flows.scenarios import data_corruption, full_cluster_restore
from sandbox.k8s_emulator.controllers import DEPLOYMENTS, PODS
from tasks.errors import BadInput
from tests.k8s_helpers import seed_namespaces


@pytest.fixture
def lam(ctl) -> str:
    (ns,) = seed_namespaces(ctl, "writers")
    return ns


def seed_pod(ctl, ns: str, name: str, owner: dict | None = None, labels: dict | None = None) -> None:
    """A pod mounting the claim `data`, bare or controlled by `owner` (an ownerReference)."""
    meta = {"name": name, "labels": labels or {"role": name}}
    if owner:
        meta["ownerReferences"] = [owner]
    container = {"name": "w", "image": "registry.local/writer:1"}
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
    ctl.seed("v1", "pods", ns, {"metadata": meta, "spec": {"containers": [container], "volumes": [volume]}})
    ctl.settle(lambda: ctl.store.get(PODS, ns, name)["status"]["phase"] == "Running")


def stateful_owner(ctl, ns: str) -> dict:
    """An ownerReference of a controller quiesce does not scale. The emulator serves no
    StatefulSets: its garbage collector keeps a dependent whose owner uid exists, so the owner
    stands in as a ConfigMap's uid under the kind StatefulSet."""
    holder = ctl.seed("v1", "configmaps", ns, {"metadata": {"name": "db-holder"}, "data": {}})
    uid = holder["metadata"]["uid"]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": uid, "controller": True}


@pytest.mark.parametrize("mode", ["snapshots", "fs"])
def test_data_corruption_refuses_claims_a_bare_pod_still_mounts(
    prefect_server, kube_api, ctl, local_store, lam, short_waits, mode
):
    target = kube_api.velero_target(include_namespaces=[lam], default_volumes_to_fs_backup=mode == "fs")
    store = local_store()
    seed_pod(ctl, lam, "debug-shell")
    backup_component("volumes", target=target, store=store)
    ctl.volumes[(lam, "data")] = "corrupted"
    before = kube_api.state(lam)

    with pytest.raises(BadInput) as refused:
        data_corruption(lam, target=target, store=store)

    said = str(refused.value)
    assert f"claim {lam}/data by pods ['debug-shell']" in said
    assert f"kubectl -n {lam} delete pod debug-shell" in said and "Nothing was changed" in said
    assert kube_api.state(lam) == before  # apps not scaled down, the claim not deleted


def test_data_corruption_refuses_a_pod_of_a_controller_quiesce_does_not_scale(
    prefect_server, kube_api, ctl, local_store, lam, short_waits
):
    """Even one whose labels match a Deployment's selector: a ReplicaSet does not adopt a pod
    another controller holds, so scaling the Deployment to 0 leaves it running."""
    target = kube_api.velero_target(include_namespaces=[lam])
    store = local_store()
    seed_pod(ctl, lam, "db-0", owner=stateful_owner(ctl, lam), labels={"app": "api"})
    backup_component("volumes", target=target, store=store)
    before = kube_api.state(lam)

    with pytest.raises(BadInput, match=rf"claim {lam}/data by pods \['db-0'\]"):
        data_corruption(lam, target=target, store=store)

    assert kube_api.state(lam) == before


def test_data_corruption_goes_ahead_when_only_deployments_and_finished_pods_mount_the_claim(
    prefect_server, kube_api, ctl, local_store, lam, short_waits
):
    """A pod that is done (Succeeded) holds no claim: not refused, and the data comes back."""
    target = kube_api.velero_target(include_namespaces=[lam])
    store = local_store()
    seed_pod(ctl, lam, "migrate")
    backup_component("volumes", target=target, store=store)
    ctl.store.patch(PODS, lam, "migrate", {"status": {"phase": "Succeeded"}}, True)
    ctl.volumes[(lam, "data")] = "corrupted"

    report = data_corruption(lam, target=target, store=store)

    assert report["pvcs"] == ["data"] and ctl.volumes[(lam, "data")] == f"{lam} volume v1"


def test_the_volumes_step_of_a_full_restore_refuses_claims_a_bare_pod_mounts_before_deleting_any(
    prefect_server, kube_api, ctl, local_store, lam, short_waits
):
    """The kubernetes step brings the bare pod back with the claims; the volumes step would then
    delete those claims under it."""
    target = kube_api.velero_target(include_namespaces=[lam])
    store = local_store()
    seed_pod(ctl, lam, "debug-shell")
    targets = {"kubernetes": target, "volumes": target}
    backup_all(components=["kubernetes", "volumes"], targets=targets, store=store)
    ctl.volumes[(lam, "data")] = "changed since"

    with pytest.raises(Exception, match=rf"claim {lam}/data by pods \['debug-shell'\]"):
        full_cluster_restore(targets=targets, store=store, dry_run=False)

    assert ctl.volumes[(lam, "data")] == "changed since"  # the claim is still there, untouched
    deployments = {d["metadata"]["name"]: d["spec"]["replicas"] for d in ctl.store.list(DEPLOYMENTS, lam)}
    assert deployments == {"api": 2, "worker": 5, "cron": 1}


def test_a_file_system_volumes_restore_refuses_to_rewrite_a_claim_live_pods_use(
    prefect_server, kube_api, ctl, local_store, lam
):
    """Velero writes every backed-up volume of the helper pods into the claim they mount, one that
    exists too: a volumes restore with the apps running rewrote their claim's data under them."""
    from flows.restore import restore_component

    target = kube_api.velero_target(include_namespaces=[lam], default_volumes_to_fs_backup=True)
    store = local_store()
    result = backup_component("volumes", target=target, store=store)
    ctl.volumes[(lam, "data")] = "written since"
    before = kube_api.state(lam)

    with pytest.raises(BadInput) as refused:
        restore_component("volumes", result.id, target=target, store=store, options={"namespaces": [lam]})

    said = str(refused.value)
    assert f"claim {lam}/data by pods ['api-" in said and "Nothing was changed" in said
    assert kube_api.state(lam) == before and ctl.volumes[(lam, "data")] == "written since"


def test_quiesce_waits_only_for_the_pods_scaling_stops(kube_api, ctl, lam):
    """A pod of another controller whose labels match a Deployment's selector is not the
    ReplicaSet's: scaling to 0 leaves it running, and quiesce waited for it until it timed out
    (postgres's quiesce_namespace too). It waits for the Deployment's own pods, then returns."""
    from tasks.components.kubernetes import quiesce

    seed_pod(ctl, lam, "db-0", owner=stateful_owner(ctl, lam), labels={"app": "api"})

    counts = quiesce.quiesce(kube_api.target(), lam, timeout=5)

    assert counts == {"api": 2, "worker": 5, "cron": 1}
    assert [p["metadata"]["name"] for p in ctl.store.list(PODS, lam)] == ["db-0"]
    quiesce.unquiesce(kube_api.target(), lam, counts)


def test_a_checklist_volumes_restore_refuses_it_before_its_checklist_and_safety_backup(
    prefect_server, kube_api, ctl, local_store, lam
):
    """restore_with_checklist checks what the restore would refuse first (check_restore): the
    refusal came only after the checklist's safety backup and its record."""
    from flows.recovery import restore_with_checklist
    from sandbox.k8s_emulator.snapshot import BACKUPS

    target = kube_api.velero_target(include_namespaces=[lam], default_volumes_to_fs_backup=True)
    store = local_store()
    backup_component("volumes", target=target, store=store)
    velero_backups, writes = len(ctl.store.list(BACKUPS)), len(ctl.writes)

    with pytest.raises(BadInput, match=rf"claim {lam}/data by pods \['api-"):
        restore_with_checklist("volumes", target=target, store=store, options={"namespaces": [lam]})

    assert len(ctl.store.list(BACKUPS)) == velero_backups and len(ctl.writes) == writes
