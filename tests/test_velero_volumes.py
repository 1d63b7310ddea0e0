"""Component "volumes" restores (tasks/components/volumes.py, kubernetes/claims.py) against the
emulator and its fake Velero: the data comes back, and only the volumes asked for change."""

from __future__ import annotations

import secrets

import pytest

from flows.backup import backup_component
from flows.scenarios import data_corruption, namespace_corruption
from sandbox.k8s_emulator.admission import ENFORCE
from sandbox.k8s_emulator.snapshot import PVS
from tasks.components import volumes
from tasks.components.kubernetes.quiesce import quiesced
from tasks.errors import BadInput, ComponentFailed
from tasks.operations.disaster import delete_namespace_task, delete_pvcs_task
from tasks.storage.catalog import list_backups
from tasks.storage.session import backup_session
from tests.k8s_helpers import seed_namespaces

# what Pod Security "restricted" asks of every container
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture
def store(local_store):
    return local_store()


def volumes_backup(target, store):
    with backup_session(store, "volumes") as session:
        volumes.backup(target, session)
        session.commit()
    return session.manifest


def test_file_system_volumes_come_back_in_a_namespace_that_enforces_restricted(kube_api, ctl, store):
    """The helper pods that bring file-system backup data back are created by Velero in the
    app's namespace, where Pod Security admission applies: their pause container must meet
    "restricted" (before, it had no securityContext, every helper pod was refused, and the
    restore of a restricted namespace ended PartiallyFailed with no data)."""
    ns = "strict-" + secrets.token_hex(3)
    ctl.seed_namespace(ns, {ENFORCE: "restricted"})
    ctl.seed_pvc(ns, "data", content="strict volume v1")
    ctl.seed_deployment(ns, "api", 2, pvcs=("data",), security_context=RESTRICTED)
    target = kube_api.velero_target(include_namespaces=[ns], default_volumes_to_fs_backup=True)
    manifest = volumes_backup(target, store)
    ctl.volumes[(ns, "data")] = "corrupted"
    with quiesced(target.kube, ns):
        delete_pvcs_task.fn(target, ns, ["data"])
        report = volumes.restore(target, manifest, store, volumes.RestoreOptions(namespaces=[ns]))
    assert report["phase"] == "Completed"
    assert ctl.volumes[(ns, "data")] == "strict volume v1"


@pytest.mark.parametrize("fs", [False, True], ids=["snapshots", "fs"])
def test_a_restore_of_claims_brings_their_volumes_too(kube_api, ctl, store, fs):
    """Velero restores a claim's volume only when the restore includes persistentvolumes (the
    claim's volumeName is reset, or its PV made from the snapshot, only for a PV it processed;
    PodVolumeRestores only "when current restore [includes] pv/pvc"). Asked for claims alone,
    the claims waited for ever for a PV that was not there; the PVs are now always restored
    with the claims."""
    (ns,) = seed_namespaces(ctl, "claims")
    target = kube_api.velero_target(include_namespaces=[ns], default_volumes_to_fs_backup=fs)
    manifest = volumes_backup(target, store)
    ctl.volumes[(ns, "data")] = "corrupted"
    with quiesced(target.kube, ns):
        delete_pvcs_task.fn(target, ns, ["data"])
        report = volumes.restore(
            target, manifest, store, volumes.RestoreOptions(namespaces=[ns], resources=["pvc"])
        )
    assert report["claims"]["bound"] == [f"{ns}/data"]
    assert ctl.volumes[(ns, "data")] == f"{ns} volume v1"


def test_claims_without_their_pvs_are_refused_before_anything_changes(kube_api, ctl, store):
    (ns,) = seed_namespaces(ctl, "nopv")
    target = kube_api.velero_target(include_namespaces=[ns])
    manifest = volumes_backup(target, store)
    before, writes = kube_api.state(), len(ctl.writes)
    options = volumes.RestoreOptions(namespaces=[ns], exclude_resources=["persistentvolumes"])
    with pytest.raises(BadInput, match="Exclude persistentvolumeclaims too"):
        volumes.restore(target, manifest, store, options)
    assert kube_api.state() == before and len(ctl.writes) == writes


@pytest.fixture
def two_claims(ctl) -> str:
    """api mounts claim data, worker claim cache; file-system backup reads both through them."""
    ns = "two-" + secrets.token_hex(3)
    ctl.seed_namespace(ns)
    for claim, app in (("data", "api"), ("cache", "worker")):
        ctl.seed_pvc(ns, claim, content=f"{claim} v1")
        ctl.seed_deployment(ns, app, 1, pvcs=(claim,))
    return ns


def test_data_corruption_of_one_claim_refuses_to_rewrite_the_others(
    prefect_server, kube_api, ctl, store, two_claims
):
    """Velero restores every backed-up volume of every pod it restores, into the claim the pod
    mounts even when that claim exists (podvolume/restorer.go): data_corruption(pvcs=['data'])
    silently rolled 'cache' back to the backup as well. It is now refused before anything
    changes, and naming both restores both."""
    ns = two_claims
    target = kube_api.velero_target(include_namespaces=[ns], default_volumes_to_fs_backup=True)
    backup_component("volumes", target=target, store=store)
    ctl.volumes[(ns, "data")], ctl.volumes[(ns, "cache")] = "corrupted", "cache v2"
    before, writes = kube_api.state(), len(ctl.writes)
    with pytest.raises(BadInput, match=rf"also rewrite \['{ns}/cache \(mounted by worker-"):
        data_corruption(ns, pvcs=["data"], target=target, store=store)
    assert kube_api.state() == before and len(ctl.writes) == writes
    assert [m.kind for m in list_backups(store, "volumes")] == ["on-demand"]  # no forensic backup
    data_corruption(ns, pvcs=["data", "cache"], target=target, store=store)
    assert ctl.volumes[(ns, "data")] == "data v1" and ctl.volumes[(ns, "cache")] == "cache v1"


def test_a_volumes_restore_names_the_existing_claims_whose_data_it_rewrote(kube_api, ctl, store, two_claims):
    """existing_resource_policy none skips a claim that exists, and the report listed it as
    'left as they are', but the helper pods rewrote its data from the backup all the same."""
    ns = two_claims
    target = kube_api.velero_target(include_namespaces=[ns], default_volumes_to_fs_backup=True)
    manifest = volumes_backup(target, store)
    ctl.volumes[(ns, "cache")] = "cache v2"
    with quiesced(target.kube, ns):
        delete_pvcs_task.fn(target, ns, ["data"])
        report = volumes.restore(target, manifest, store, volumes.RestoreOptions(namespaces=[ns]))
    assert ctl.volumes[(ns, "data")] == "data v1"
    assert ctl.volumes[(ns, "cache")] == "cache v1"  # what Velero does: the report must say so
    assert [c.split(" ")[0] for c in report["rewritten_claims"]] == [f"{ns}/cache"]
    assert report["note"].startswith(f"claims ['{ns}/cache (mounted by worker-")


def retain(ctl, ns: str, claim: str = "data") -> str:
    """The claim's PV set to reclaimPolicy Retain (as admins do to keep a disk); -> its name."""
    pv = f"pv-{ns}-{claim}"
    ctl.store.patch(PVS, "", pv, {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
    return pv


def test_a_claim_whose_retained_pv_lingers_released_does_not_get_its_snapshot_back(kube_api, ctl, store):
    """What Velero does (restore.go shouldRestore): a PV of the same name that is Released waits
    resourceTerminatingTimeout (10 min; the emulator fails at once), then the item fails and
    the restored claim stays Pending."""
    (ns,) = seed_namespaces(ctl, "released")
    pv = retain(ctl, ns)
    target = kube_api.velero_target(include_namespaces=[ns], restore_timeout_seconds=2)
    manifest = volumes_backup(target, store)
    with quiesced(target.kube, ns):
        delete_pvcs_task.fn(target, ns, ["data"])
        assert ctl.store.get(PVS, "", pv)["status"]["phase"] == "Released"
        with pytest.raises(ComponentFailed, match="PartiallyFailed with 1 errors"):
            volumes.restore(target, manifest, store, volumes.RestoreOptions(namespaces=[ns]))


def test_data_corruption_refuses_claims_whose_pvs_are_retained_before_anything_changes(
    prefect_server, kube_api, ctl, store
):
    """A PV with reclaimPolicy Retain stays Released once data_corruption deletes its claim, and
    Velero waited 10 minutes for it before failing the restore, the apps down all along. It is
    now refused before the forensic backup or any change, saying what to do; with the policy
    set to Delete as it says, the data comes back."""
    (ns,) = seed_namespaces(ctl, "retain")
    pv = retain(ctl, ns)
    target = kube_api.velero_target(include_namespaces=[ns])
    backup_component("volumes", target=target, store=store)
    ctl.volumes[(ns, "data")] = "corrupted"
    before, writes = kube_api.state(), len(ctl.writes)
    with pytest.raises(BadInput, match=rf"PVs \['{pv} \(claim {ns}/data\)'\] have persistentVolumeReclaim"):
        data_corruption(ns, target=target, store=store)
    assert kube_api.state() == before and len(ctl.writes) == writes
    assert [m.kind for m in list_backups(store, "volumes")] == ["on-demand"]  # no forensic backup
    ctl.store.patch(PVS, "", pv, {"spec": {"persistentVolumeReclaimPolicy": "Delete"}})
    data_corruption(ns, target=target, store=store)
    assert ctl.volumes[(ns, "data")] == f"{ns} volume v1"


def test_a_namespace_deleted_by_the_incident_is_refused_while_its_retained_pvs_linger(
    prefect_server, kube_api, ctl, store
):
    """The incident deleted the namespace itself: its claims are gone, and a PV with reclaimPolicy
    Retain stays Released under the name Velero restores its snapshot to. The check looked only
    at claims that exist, so namespace_corruption went ahead, Velero waited for the PV and failed
    the item, and the claim stayed Pending. The PV is found from the backup's record of which
    volume each claim had, and the restore refused before anything changes; once the PV is
    deleted as the error says (its disk stays: Retain), the data comes back."""
    (ns,) = seed_namespaces(ctl, "gone")
    pv = retain(ctl, ns)
    target = kube_api.velero_target(include_namespaces=[ns])
    backup_component("kubernetes", target=target, store=store)
    delete_namespace_task.fn(target, ns)  # the incident
    assert ctl.store.get(PVS, "", pv)["status"]["phase"] == "Released"
    before, writes = kube_api.state(), len(ctl.writes)
    refused = rf"PVs \['{pv} \(claim {ns}/data, gone\)'\] .*`kubectl delete pv {pv}`"
    with pytest.raises(BadInput, match=refused):
        namespace_corruption(ns, target=target, store=store)
    assert kube_api.state() == before and len(ctl.writes) == writes
    ctl.store.delete(PVS, "", pv)
    namespace_corruption(ns, target=target, store=store)
    assert ctl.volumes[(ns, "data")] == f"{ns} volume v1"
