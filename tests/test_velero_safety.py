"""What a Kubernetes restore that overwrites (existing_resource_policy=update) keeps to roll back:
its safety copies cover everything it may change, cluster-scoped objects included (CRDs,
ClusterRoles, PVs...), against the emulator and its fake Velero."""

from __future__ import annotations

import secrets

from sandbox.k8s_emulator.store import BY_PATH
from tasks.components import kubernetes as velero
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes.velero import run_restore
from tasks.storage.session import backup_session
from tests.k8s_helpers import k8s, seed_namespaces

RBAC = "rbac.authorization.k8s.io/v1"
ROLES = BY_PATH[(RBAC, "clusterroles")]
BEFORE = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
LATER = [{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list"]}]


def whole_cluster_backup(kube_api, ctl, store):
    """A backup of every namespace with ClusterRole 'shop-reader' as BEFORE; then the role is
    changed to LATER, which a whole restore with policy update overwrites."""
    seed_namespaces(ctl, "shop")
    ctl.seed(RBAC, "clusterroles", "", {"metadata": {"name": "shop-reader"}, "rules": BEFORE})
    target = kube_api.velero_target(include_namespaces=["*"])
    with backup_session(store, "kubernetes") as session:
        velero.backup(target, session)
        session.commit()
    role = ctl.store.get(ROLES, "", "shop-reader")
    ctl.store.replace(ROLES, "", "shop-reader", {**role, "rules": LATER})
    return target, session.manifest


def test_the_velero_safety_copy_of_a_whole_restore_holds_the_cluster_scoped_objects_it_overwrites(
    kube_api, ctl, local_store
):
    """The safety backup taken before a whole restore with policy update named the namespaces
    only, and Velero leaves cluster-scoped objects out of a backup of named namespaces: the
    restore overwrote ClusterRole shop-reader, and `velero restore create --from-backup
    <rollback_velero_backup>` could not put it back."""
    store = local_store()
    target, manifest = whole_cluster_backup(kube_api, ctl, store)
    options = velero.RestoreOptions(existing_resource_policy="update")
    report = velero.restore(target, manifest, store, options)
    assert ctl.store.get(ROLES, "", "shop-reader")["rules"] == BEFORE  # overwritten by the restore
    safety = report["rollback_velero_backup"]

    # the rollback by hand: velero restore create --from-backup <safety> --existing-resource-policy update
    spec = {"backupName": safety, "existingResourcePolicy": "update"}
    run_restore(k8s(kube_api), target, safety, spec, None)

    assert ctl.store.get(ROLES, "", "shop-reader")["rules"] == LATER


def test_a_rollback_of_a_whole_restore_puts_the_cluster_scoped_objects_back(
    prefect_server, kube_api, ctl, local_store
):
    """The checklist's rollback restored the safety backup's namespaces that the restore wrote
    to; a namespace created since the restored backup is in the safety backup but not among
    those, and Velero reads a restore of some namespaces as 'leave cluster-scoped objects
    alone': the rollback said 'rolled back' and the ClusterRole stayed as the restore left it."""
    from flows.recovery import restore_with_checklist, rollback_restore

    store = local_store()
    target, manifest = whole_cluster_backup(kube_api, ctl, store)
    kube.create_namespace(k8s(kube_api), f"since-{secrets.token_hex(3)}")  # created after the backup
    record = restore_with_checklist(
        "kubernetes",
        backup_id=manifest.id,
        target=target,
        store=store,
        options={"existing_resource_policy": "update"},
    )
    assert ctl.store.get(ROLES, "", "shop-reader")["rules"] == BEFORE

    rolled = rollback_restore(record.id, target=target, store=store)

    assert rolled.status == "rolled back"
    assert ctl.store.get(ROLES, "", "shop-reader")["rules"] == LATER
