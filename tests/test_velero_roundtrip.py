"""What a Velero backup holds and a restore brings back, against the whole state of the
namespace (normalised as Velero restores objects: without what the server sets, status,
allocated cluster IPs and the restore labels), and what the emulated Velero leaves out as
the real one does (pkg/backup/item_backupper.go itemInclusionChecks)."""

from __future__ import annotations

from sandbox.k8s_emulator.snapshot import CONFIGMAPS, NAMESPACES
from tasks.components import kubernetes as velero
from tasks.storage.session import backup_session
from tests.k8s_helpers import seed_namespaces, seed_settings

SERVER_SET = {"uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "generateName"}
SERVER_SET |= {"ownerReferences", "selfLink"}  # restore.go resetMetadata drops these too


def take_backup(kube_api, store, ns: str):
    target = kube_api.velero_target(include_namespaces=[ns])
    with backup_session(store, "kubernetes") as session:
        velero.backup(target, session)
        session.commit()
    return target, session.manifest


def delete_namespace(ctl, ns: str) -> None:
    ctl.store.delete(NAMESPACES, "", ns)
    ctl.settle(lambda: ctl.store.find(NAMESPACES, "", ns) is None)


def test_velero_leaves_out_excluded_objects_and_objects_being_deleted_and_the_restore_expects_neither(
    kube_api, ctl, local_store
):
    """item_backupper.go itemInclusionChecks: an object labelled velero.io/exclude-from-backup=true
    and one being deleted (a deletionTimestamp, held by a finalizer) are not backed up. The
    emulated Velero backed both up, and our inventory listed both: on a real cluster every
    restore of such a backup ended in IntegrityError ("Completed but these objects are missing")."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "skip", seed=seed_settings)
    excluded = {"name": "scratch", "labels": {"velero.io/exclude-from-backup": "true"}}
    ctl.seed("v1", "configmaps", ns, {"metadata": excluded, "data": {"tmp": "1"}})
    going = {"name": "going", "finalizers": ["example.com/hold"]}
    ctl.seed("v1", "configmaps", ns, {"metadata": going, "data": {"old": "1"}})
    ctl.store.delete(CONFIGMAPS, ns, "going")  # held by its finalizer: deletionTimestamp only
    target, manifest = take_backup(kube_api, store, ns)
    doc = velero.load_document(store, manifest)
    assert doc["inventory"][ns]["configmaps"] == ["settings"]
    delete_namespace(ctl, ns)

    report = velero.restore(target, manifest, store, velero.RestoreOptions())

    assert report["phase"] == "Completed" and report["verified_objects"] == 1
    assert [c["metadata"]["name"] for c in ctl.store.list(CONFIGMAPS, ns)] == ["settings"]
