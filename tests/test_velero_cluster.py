"""A restore of a whole Velero backup brings back its cluster-scoped objects too (CRDs,
ClusterRoles, ClusterRoleBindings, ...), against the emulator and its fake Velero."""

from __future__ import annotations

import pytest

from sandbox.k8s_emulator.store import BY_PATH
from tasks.components import kubernetes as velero
from tasks.components.kubernetes import api as kube
from tasks.storage.session import backup_session
from tests.k8s_helpers import k8s, seed_namespaces

RBAC = "rbac.authorization.k8s.io/v1"
ROLES, BINDINGS = BY_PATH[(RBAC, "clusterroles")], BY_PATH[(RBAC, "clusterrolebindings")]


def test_a_whole_cluster_backup_restored_whole_brings_back_its_cluster_scoped_objects(
    kube_api, ctl, local_store
):
    """Velero restores cluster-scoped objects of a restore that names its namespaces only when
    includeClusterResources is true (restore.go getOrderedResourceCollection: "Skipping resource
    ... because it's cluster-scoped and only specific namespaces are included in the restore").
    We name the namespaces, so a full-cluster restore of an all-namespaces backup brought back
    no ClusterRole, ClusterRoleBinding or CRD, and said Completed."""
    store = local_store()
    shop, _ = seed_namespaces(ctl, "shop", "db")
    rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
    ctl.seed(RBAC, "clusterroles", "", {"metadata": {"name": "shop-reader"}, "rules": [rule]})
    subject = {"kind": "ServiceAccount", "name": "default", "namespace": shop}
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "shop-reader"}
    ctl.seed(
        RBAC,
        "clusterrolebindings",
        "",
        {"metadata": {"name": "shop-reader"}, "roleRef": role_ref, "subjects": [subject]},
    )
    target = kube_api.velero_target(include_namespaces=["*"])
    with backup_session(store, "kubernetes") as session:
        velero.backup(target, session)
        session.commit()
    ctl.store.delete(ROLES, "", "shop-reader")
    ctl.store.delete(BINDINGS, "", "shop-reader")
    kube.delete_namespace(k8s(kube_api), shop, interval=0.01)
    report = velero.restore(target, session.manifest, store, velero.RestoreOptions())
    assert report["phase"] == "Completed" and kube.namespace_exists(k8s(kube_api), shop)
    assert ctl.store.get(ROLES, "", "shop-reader")["rules"] == [rule]
    assert ctl.store.get(BINDINGS, "", "shop-reader")["subjects"] == [subject]


def test_a_restore_of_some_namespaces_leaves_cluster_scoped_objects_alone(kube_api, ctl, local_store):
    store = local_store()
    shop, _ = seed_namespaces(ctl, "shop", "db")
    ctl.seed(RBAC, "clusterroles", "", {"metadata": {"name": "shop-reader"}, "rules": []})
    target = kube_api.velero_target(include_namespaces=["*"])
    with backup_session(store, "kubernetes") as session:
        velero.backup(target, session)
        session.commit()
    ctl.store.delete(ROLES, "", "shop-reader")
    velero.restore(target, session.manifest, store, velero.RestoreOptions(namespaces=[shop]))
    assert ctl.store.find(ROLES, "", "shop-reader") is None
    # only namespaced kinds asked for: no cluster-scoped object can be written, even with
    # include_cluster_resources (as a whole-backup restore of some kinds sets it). The report said
    # it may have created some, so a restore that wrote nothing was recorded as a change, and its
    # rollback could not go by name
    only = velero.RestoreOptions(namespaces=[shop], resources=["configmaps"], include_cluster_resources=True)
    report = velero.restore(target, session.manifest, store, only)
    assert report["created"] == [] and report["overwritten"] == []
    assert velero.NOTHING_WRITTEN in report["note"]
    assert ctl.store.find(ROLES, "", "shop-reader") is None


@pytest.mark.parametrize("kubernetes_data", ["other-snapshot", "no-snapshot"])
def test_a_full_cluster_restore_puts_the_chosen_volumes_backups_data_in_the_volumes(
    prefect_server, kube_api, ctl, local_store, kubernetes_data
):
    """The kubernetes step restores the claims first, with the data of the kubernetes backup's
    own snapshots (taken at another moment than the volumes backup), or empty volumes when its
    target does not snapshot; the volumes step then had Velero skip every claim as existing,
    and the data of the volumes backup of the recovery point never got in."""
    from flows.backup import backup_all
    from flows.scenarios import full_cluster_restore
    from tasks.storage.catalog import latest_backup

    store = local_store()
    (ns,) = seed_namespaces(ctl, "vol")
    volumes_target = kube_api.velero_target(include_namespaces=[ns])
    kubernetes_target = kube_api.velero_target(
        include_namespaces=[ns], snapshot_volumes=None if kubernetes_data == "other-snapshot" else False
    )
    targets = {"kubernetes": kubernetes_target, "volumes": volumes_target}
    backup_all(components=["kubernetes", "volumes"], targets=targets, store=store)
    if kubernetes_data == "other-snapshot":  # the kubernetes backup saw the volume a moment apart
        name = velero.load_document(store, latest_backup(store, "kubernetes"))["backup"]["metadata"]["name"]
        ctl.snapshots[name].volumes[(ns, "data")] = "written between the two backups"
    kube.delete_namespace(k8s(kube_api), ns, interval=0.01)  # the cluster is lost

    result = full_cluster_restore(targets=targets, store=store, dry_run=False)

    assert result["steps"]["volumes"] == "done"
    assert ctl.volumes[(ns, "data")] == f"{ns} volume v1"  # the volumes backup's
    replicas = {d.metadata.name: d.spec.replicas for d in kube.list_deployments(k8s(kube_api), ns)}
    assert replicas == {"api": 2, "worker": 5, "cron": 1}  # the apps back as they were


def test_a_full_cluster_restore_into_a_mapped_namespace_puts_the_volumes_data_there(
    prefect_server, kube_api, ctl, local_store
):
    """Both steps map the namespace to a new one: the kubernetes step makes it with its claims,
    the volumes step replaces those claims with the volumes backup's data. A mapping into a
    namespace that exists is refused for component kubernetes, not for volumes, whose step
    writes into the one the kubernetes step made. And a volumes option that the restore refuses
    (a misspelt exclusion) is refused before any claim is deleted."""
    from flows.backup import backup_all
    from flows.scenarios import full_cluster_restore
    from tasks.errors import ComponentFailed

    store = local_store()
    (ns,) = seed_namespaces(ctl, "map")
    target = kube_api.velero_target(include_namespaces=[ns])
    targets = {"kubernetes": target, "volumes": target}
    backup_all(components=["kubernetes", "volumes"], targets=targets, store=store)
    ctl.volumes[(ns, "data")] = "changed since"
    copy = f"copy-{ns}"

    with pytest.raises(ComponentFailed, match=r"step volumes failed: exclude_namespaces \['nope'\]"):
        full_cluster_restore(
            targets=targets, store=store, dry_run=False, options={"volumes": {"exclude_namespaces": ["nope"]}}
        )
    assert kube.list_names(k8s(kube_api), ns, "persistentvolumeclaims") == ["data"]  # not deleted

    mapped = {"namespaces": [ns], "namespace_mapping": {ns: copy}}
    result = full_cluster_restore(
        targets=targets, store=store, dry_run=False, options={"kubernetes": mapped, "volumes": mapped}
    )
    assert result["steps"]["volumes"] == "done"
    assert ctl.volumes[(copy, "data")] == f"{ns} volume v1" and ctl.volumes[(ns, "data")] == "changed since"


def test_a_full_cluster_restore_resumed_after_a_kill_in_its_volumes_step_puts_the_apps_back(
    prefect_server, kube_api, ctl, local_store
):
    """A volumes step killed after it quiesced the apps (their counts kept in an annotation) and
    deleted the claims: on resume no claim exists any more, so the step quiesced nothing, and
    nothing put the replicas back; the run said done with every app of the namespace at 0."""
    from flows.backup import backup_all
    from flows.scenarios import full_cluster_restore
    from sandbox.k8s_emulator.snapshot import PVS
    from tasks.components.kubernetes.quiesce import quiesce
    from tasks.errors import ComponentFailed
    from tasks.operations.disaster import delete_pvcs_task

    store = local_store()
    (ns,) = seed_namespaces(ctl, "kill")
    target = kube_api.velero_target(include_namespaces=[ns])
    targets = {"kubernetes": target, "volumes": target}
    backup_all(components=["kubernetes", "volumes"], targets=targets, store=store)
    ctl.volumes[(ns, "data")] = "changed since"
    pv = f"pv-{ns}-data"
    ctl.store.patch(PVS, "", pv, {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
    state = full_cluster_restore(targets=targets, store=store, dry_run=False, return_state=True)
    assert state.is_failed()  # the volumes step refuses the Retain PV first; the kubernetes step is done
    with pytest.raises(ComponentFailed, match="step volumes failed"):
        state.result()
    run_id = str(state.message).split("run_id='")[1].split("'")[0]
    ctl.store.patch(PVS, "", pv, {"spec": {"persistentVolumeReclaimPolicy": "Delete"}})  # as it says
    # a resume killed in its volumes step, after it quiesced the apps and deleted the claims
    quiesce(target.kube, ns)
    delete_pvcs_task.fn(target, ns, ["data"])

    result = full_cluster_restore(targets=targets, store=store, dry_run=False, run_id=run_id)

    assert result["steps"]["namespaces-and-crds"] == "done (earlier run)"
    assert result["steps"]["volumes"] == "done"
    assert ctl.volumes[(ns, "data")] == f"{ns} volume v1"
    replicas = {d.metadata.name: d.spec.replicas for d in kube.list_deployments(k8s(kube_api), ns)}
    assert replicas == {"api": 2, "worker": 5, "cron": 1}  # the apps back as they were


def test_a_full_cluster_restore_checks_every_backup_of_the_point_before_it_changes_anything(
    prefect_server, kube_api, ctl, local_store, tmp_path
):
    """Each step verified its own backup only when its turn came: with the point's app-state
    backup damaged, the Kubernetes step had already restored the lost namespace from that point
    when the run failed, and no resume could finish it (the backup stays damaged): the cluster
    was left half at that point, and a run from an older point then mixed the two."""
    from flows.backup import backup_all
    from flows.scenarios import full_cluster_restore
    from tasks.errors import ComponentFailed
    from tasks.operations.recovery import get_recovery_point, member_manifests
    from tests.drill.conftest import Prod, flip_byte

    store = local_store()
    (ns,) = seed_namespaces(ctl, "whole")
    prod = Prod(tmp_path / "prod")
    targets = {"kubernetes": kube_api.velero_target(include_namespaces=[ns]), "app-state": prod.target()}
    point = backup_all(components=["kubernetes", "app-state"], targets=targets, store=store).recovery_point
    app = member_manifests(store, get_recovery_point(store, point))["app-state"]
    flip_byte(store, app.objects[0].key)
    kube.delete_namespace(k8s(kube_api), ns, interval=0.01)  # the cluster is lost

    state = full_cluster_restore(targets=targets, store=store, dry_run=False, return_state=True)

    assert state.is_failed()
    with pytest.raises(ComponentFailed, match=f"(?s){app.id} does not verify.*Nothing was changed"):
        state.result()
    assert not kube.namespace_exists(k8s(kube_api), ns)  # nothing restored from a point it cannot finish
    assert prod.restores == 0
