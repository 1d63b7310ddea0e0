"""The Kubernetes components through the Prefect flows (a real Prefect test server): backup and
restore flows, the runbook's scenarios 2 and 3, partial restore, and component "volumes"."""

from __future__ import annotations

import secrets

import pytest

from flows.backup import backup_component
from flows.restore import restore_component
from flows.scenarios import data_corruption, namespace_corruption, partial_restore
from tasks.components import kubernetes as velero
from tasks.components.kubernetes import api as kube
from tasks.errors import BadInput, ComponentFailed, NotFound
from tasks.storage.catalog import get_backup, latest_backup, list_backups
from tests.k8s_helpers import configmap, k8s, seed_namespaces, set_configmap


@pytest.fixture
def namespaces(ctl) -> tuple[str, str]:
    return seed_namespaces(ctl, "lambda", "database")


def volume_target(kube_api, namespaces, mode: str):
    """Volume data by snapshots (the seeded PVs: native snapshots) or by file-system backup
    (PodVolumeBackups of the running api pods, restored through restored pods)."""
    return kube_api.velero_target(
        include_namespaces=list(namespaces), default_volumes_to_fs_backup=mode == "fs"
    )


# parametrize a test with this, indirect: it runs with snapshots and with file-system backup
BOTH_VOLUME_MODES = pytest.mark.parametrize("target", ["snapshots", "fs"], indirect=True)


@pytest.fixture
def target(request, kube_api, namespaces):
    return volume_target(kube_api, namespaces, getattr(request, "param", "snapshots"))


@pytest.fixture
def store(local_store):
    return local_store()


def replicas(kube_api, ns: str) -> dict[str, int]:
    return {d.metadata.name: d.spec.replicas for d in kube.list_deployments(k8s(kube_api), ns)}


@BOTH_VOLUME_MODES
def test_backup_two_namespaces_delete_one_restore_it_through_the_flows(
    prefect_server, kube_api, target, store, namespaces
):
    lam, db = namespaces
    result = backup_component("kubernetes", target=target, store=store)
    assert result.verified and result.component == "kubernetes"
    manifest = get_backup(store, result.id)
    assert manifest.engine["velero_backup"] == result.id.lower() and manifest.engine["phase"] == "Completed"
    db_before = kube_api.state(db)
    lam_before = kube_api.state(lam)
    kube.delete_namespace(k8s(kube_api), lam, interval=0.01)
    assert not kube.namespace_exists(k8s(kube_api), lam)
    report = restore_component(
        "kubernetes", result.id, target=target, store=store, options={"namespaces": [lam]}
    )
    assert report["phase"] == "Completed" and report["verified_objects"] == 8
    after = kube_api.state(lam)
    assert set(after["objects"]) == set(lam_before["objects"])  # every object is back
    assert replicas(kube_api, lam) == {"api": 2, "worker": 5, "cron": 1}
    assert configmap(kube_api, lam, "settings") == {"mode": "prod"}
    assert after["volumes"] == lam_before["volumes"]  # and the volume's data
    assert kube_api.state(db) == db_before


def test_restore_of_an_unknown_backup_id_changes_nothing(prefect_server, kube_api, target, store):
    before = kube_api.state()
    with pytest.raises(NotFound, match="no backup kubernetes-20200101T000000Z-abcdef"):
        restore_component("kubernetes", "kubernetes-20200101T000000Z-abcdef", target=target, store=store)
    assert kube_api.state() == before


@BOTH_VOLUME_MODES
def test_namespace_corruption_keeps_a_forensic_backup_then_restores(
    prefect_server, kube_api, target, store, namespaces
):
    lam, _ = namespaces
    backup_component("kubernetes", target=target, store=store)
    k = k8s(kube_api)
    k.core.delete_namespaced_config_map("flags", lam)  # the corruption
    set_configmap(kube_api, lam, "settings", {"mode": "corrupted"})
    report = namespace_corruption(lam, target=target, store=store)
    assert configmap(kube_api, lam, "settings") == {"mode": "prod"}
    assert configmap(kube_api, lam, "flags") == {"beta": "off"}
    assert report["already_existed"] == []  # the namespace was deleted first: nothing skipped
    forensic = [m for m in list_backups(store, "kubernetes") if m.kind == "forensic"]
    assert [m.id for m in forensic] == [report["forensic_backup"]]
    assert velero.load_document(store, forensic[0])["inventory"][lam]["configmaps"] == ["settings"]
    assert forensic[0].labels == {"kind": "forensic", "purpose": "forensic", "namespace": lam}
    # "latest" of the component is still the good backup, not the broken state
    assert latest_backup(store, "kubernetes").id == report["backup_id"]


def test_namespace_corruption_refuses_a_backup_without_the_namespace(prefect_server, kube_api, target, store):
    before = kube_api.state()
    with pytest.raises(NotFound, match="no kubernetes backup holds namespace 'elsewhere'"):
        namespace_corruption("elsewhere", target=target, store=store)
    assert kube_api.state() == before


def test_data_corruption_restores_pvcs_from_the_last_backup_that_verifies_good(
    prefect_server, kube_api, ctl, kube_api_volumes, store, namespaces
):
    lam, _ = namespaces
    target = kube_api_volumes
    good = backup_component("volumes", target=target, store=store)
    ctl.volumes[(lam, "data")] = "bad bytes written before the second backup"
    newest = backup_component("volumes", target=target, store=store)
    # the newest backup's record in the store is damaged: it must be passed over
    bad = get_backup(store, newest.id)
    key = bad.objects[0].key
    path = f"{store.path}/{key}"
    with open(path, "r+b") as fh:
        fh.seek(5)
        fh.write(b"\x00\x01")
    ctl.volumes[(lam, "data")] = "corrupted"
    report = data_corruption(lam, target=target, store=store)
    assert report["backup_id"] == good.id
    assert newest.id in report["rejected_backups"]
    assert ctl.volumes[(lam, "data")] == f"{lam} volume v1"
    assert report["replicas_restored"] == {"api": 2, "worker": 5, "cron": 1}
    assert replicas(kube_api, lam) == {"api": 2, "worker": 5, "cron": 1}
    forensic = [m for m in list_backups(store, "volumes") if m.kind == "forensic"]
    assert [m.id for m in forensic] == [report["forensic_backup"]]


def test_data_corruption_passes_over_a_volumes_backup_from_a_clock_that_ran_ahead(
    prefect_server, kube_api, ctl, kube_api_volumes, store, namespaces, monkeypatch
):
    """A volumes backup whose source time is in the future (the worker's clock ran ahead) is not
    'the newest good one': `latest` refuses such a backup, and scenario 3 restored it, over the
    real newest, naming no reason."""
    from datetime import UTC, datetime, timedelta

    from tasks.components.kubernetes import backups

    lam, _ = namespaces
    good = backup_component("volumes", target=kube_api_volumes, store=store)

    class Ahead(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(days=2)

    monkeypatch.setattr(backups, "datetime", Ahead)
    ctl.volumes[(lam, "data")] = "written under a skewed clock"
    skewed = backup_component("volumes", target=kube_api_volumes, store=store)
    monkeypatch.undo()
    assert skewed.source_time > datetime.now(UTC) + timedelta(days=1)
    ctl.volumes[(lam, "data")] = "corrupted"
    report = data_corruption(lam, target=kube_api_volumes, store=store)
    assert report["backup_id"] == good.id
    assert "in the future" in report["rejected_backups"][skewed.id]
    assert ctl.volumes[(lam, "data")] == f"{lam} volume v1"


def test_data_corruption_puts_the_apps_back_when_the_restore_fails(
    prefect_server, kube_api, ctl, kube_api_volumes, store, namespaces
):
    lam, _ = namespaces
    backup_component("volumes", target=kube_api_volumes, store=store)
    ctl.restore_outcome = "Failed"
    with pytest.raises(ComponentFailed, match="ended Failed"):
        data_corruption(lam, target=kube_api_volumes, store=store)
    assert replicas(kube_api, lam) == {"api": 2, "worker": 5, "cron": 1}


@pytest.fixture(params=["snapshots", "fs"])
def kube_api_volumes(request, kube_api, namespaces):
    return volume_target(kube_api, namespaces, request.param)


def test_volumes_backup_with_file_system_backup_records_pod_volume_backups(kube_api, namespaces, store):
    from tasks.components import volumes
    from tasks.storage.session import backup_session

    target = kube_api.velero_target(include_namespaces=list(namespaces), default_volumes_to_fs_backup=True)
    with backup_session(store, "volumes") as session:
        volumes.backup(target, session)
        session.commit()
    manifest = session.manifest
    assert manifest.engine["volumes_with_data"] == 2
    assert {p["namespace"] for p in manifest.engine["fs_backups"]} == set(namespaces)
    spec = velero.load_document(store, manifest)["backup"]["spec"]
    assert spec["defaultVolumesToFsBackup"] is True
    assert spec["includedResources"] == ["persistentvolumeclaims", "persistentvolumes", "pods"]


def test_volumes_backup_without_volume_data_fails(kube_api, namespaces, store):
    from tasks.components import volumes
    from tasks.storage.session import backup_session

    target = kube_api.velero_target(include_namespaces=list(namespaces), snapshot_volumes=False)
    with (
        pytest.raises(ComponentFailed, match="data of only 0 volumes"),
        backup_session(store, "volumes") as s,
    ):
        volumes.backup(target, s)
        s.commit()
    assert list_backups(store, "volumes") == []


@BOTH_VOLUME_MODES
def test_partial_restore_flow_one_resource_type_into_a_mapped_namespace(
    prefect_server, kube_api, target, store, namespaces
):
    lam, _ = namespaces
    result = backup_component("kubernetes", target=target, store=store)
    before = kube_api.state(lam)
    dest = f"inspect-{secrets.token_hex(3)}"
    report = partial_restore(
        result.id, [lam], resources=["secrets"], namespace_mapping={lam: dest}, store=store, target=target
    )
    assert report["verified_objects"] == 1
    k = k8s(kube_api)
    assert kube.list_names(k, dest, "secrets") == ["db-password"]
    # only the cluster's own (every namespace gets it): no configmap of the backup
    assert kube.list_names(k, dest, "configmaps") == ["kube-root-ca.crt"]
    assert kube_api.state(lam) == before
    with pytest.raises(BadInput, match="name the namespaces"):
        partial_restore(result.id, [], store=store, target=target)


def test_blocks_saved_by_name_with_kubeconfig_contents_work_in_the_flows(
    prefect_server, kube_api, namespaces, store
):
    from pydantic import SecretStr

    from blocks.kubernetes import KubernetesTarget, VeleroTarget

    name = "k8s-" + secrets.token_hex(3)
    VeleroTarget(
        kube=KubernetesTarget(kubeconfig=SecretStr(kube_api.kubeconfig_path.read_text())),
        include_namespaces=[namespaces[0]],
        poll_interval_seconds=0.02,
    ).save(name)
    loaded = VeleroTarget.load(name)
    assert loaded.kube.kubeconfig.get_secret_value() == kube_api.kubeconfig_path.read_text()
    result = backup_component("kubernetes", target=name, store=store)
    manifest = get_backup(store, result.id)
    assert manifest.engine["namespaces"] == [namespaces[0]]
    assert "emulator-token" not in manifest.model_dump_json()


@pytest.mark.parametrize("phase", [None, "PartiallyFailed"])
def test_a_velero_restore_that_completes_with_errors_fails_the_restore_flow(
    prefect_server, kube_api, ctl, target, store, namespaces, phase
):
    """Velero's own phase may say Completed while status.errors > 0: the restore still fails, with
    the count and how to list the errors; warnings alone do not fail it."""
    lam, _ = namespaces
    result = backup_component("kubernetes", target=target, store=store)
    ctl.restore_outcome, ctl.restore_errors = phase, 3
    with pytest.raises(ComponentFailed, match=r"ended (Completed|PartiallyFailed) with 3 errors") as failed:
        restore_component("kubernetes", result.id, target=target, store=store, options={"namespaces": [lam]})
    assert "velero restore describe" in str(failed.value)
    assert "is incomplete" in str(failed.value)
    ctl.restore_outcome, ctl.restore_errors = None, 0
    report = restore_component(
        "kubernetes", result.id, target=target, store=store, options={"namespaces": [lam]}
    )
    assert report["warnings"] > 0  # every object already existed: Velero warns, the report keeps it


def objects_but_pods(state: dict) -> set:
    return {key for key in state["objects"] if key[0] != "pods"}


def pod_count(state: dict) -> int:
    return sum(1 for key in state["objects"] if key[0] == "pods")


@BOTH_VOLUME_MODES
def test_full_cluster_restore_brings_back_namespaces_and_volume_data(
    prefect_server, kube_api, ctl, target, store, namespaces
):
    from flows.backup import backup_all
    from flows.scenarios import full_cluster_restore

    lam, db = namespaces
    targets = {"kubernetes": target, "volumes": target}
    backup_all(components=["kubernetes", "volumes"], targets=targets, store=store)
    before = {ns: kube_api.state(ns) for ns in namespaces}
    for ns in namespaces:  # the cluster is lost
        kube.delete_namespace(k8s(kube_api), ns, interval=0.01)
    result = full_cluster_restore(targets=targets, store=store, dry_run=False)
    assert result["steps"]["verify"]
    for ns in namespaces:
        after = kube_api.state(ns)
        # the volumes step quiesces the apps to replace their claims: their pods are new ones
        assert objects_but_pods(after) == objects_but_pods(before[ns])
        assert pod_count(after) == pod_count(before[ns])
        assert after["volumes"] == before[ns]["volumes"] == {(ns, "data"): f"{ns} volume v1"}
    assert replicas(kube_api, lam) == {"api": 2, "worker": 5, "cron": 1}


def test_a_rollback_of_a_kubernetes_restore_puts_back_what_the_restore_overwrote(
    prefect_server, kube_api, target, store, namespaces
):
    """The safety backup was restored with Velero's default policy (leave existing objects as
    they are): the rollback said 'rolled back' and the restored objects stayed. It now
    overwrites, within the restore's own namespaces only."""
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore

    lam, db = namespaces
    backup_component("kubernetes", target=target, store=store)
    set_configmap(kube_api, lam, "settings", {"mode": "broken"})
    set_configmap(kube_api, db, "settings", {"mode": "db-before"})
    record = restore_with_checklist(
        "kubernetes",
        target=target,
        store=store,
        options={"namespaces": [lam], "existing_resource_policy": "update"},
    )
    assert configmap(kube_api, lam, "settings") == {"mode": "prod"}
    set_configmap(kube_api, db, "settings", {"mode": "db-written-since"})  # not the restore's

    rolled = rollback_restore(record.id, target=target, store=store)

    assert rolled.status == "rolled back"
    assert configmap(kube_api, lam, "settings") == {"mode": "broken"}  # what was there before
    assert configmap(kube_api, db, "settings") == {"mode": "db-written-since"}  # left alone
    rollback = load_restore_record(store, rolled.rolled_back_by)
    assert rollback.options == {"namespaces": [lam], "existing_resource_policy": "update"}


def test_a_namespace_corruption_whose_restore_fails_says_the_namespace_is_gone_and_what_to_do(
    prefect_server, kube_api, ctl, target, store, namespaces
):
    """Before: the namespace was deleted, then the restore failed, and the run failed with Velero's
    message alone: nothing said the namespace was gone now, which forensic backup held its broken
    state, nor that running the scenario again brings it back (it did)."""
    lam, _ = namespaces
    backup_component("kubernetes", target=target, store=store)
    ctl.restore_outcome = "Failed"
    with pytest.raises(ComponentFailed) as failed:
        namespace_corruption(lam, target=target, store=store)
    (forensic,) = [m.id for m in list_backups(store, "kubernetes") if m.kind == "forensic"]
    assert f"namespace {lam} was deleted" in str(failed.value) and forensic in str(failed.value)
    assert "namespace_corruption(" in str(failed.value)
    assert not kube.namespace_exists(k8s(kube_api), lam)

    ctl.restore_outcome = None
    namespace_corruption(lam, target=target, store=store)  # what the message says
    assert configmap(kube_api, lam, "settings") == {"mode": "prod"}


def test_a_data_corruption_whose_restore_fails_names_the_deleted_claims_and_their_forensic_backup(
    prefect_server, kube_api, ctl, kube_api_volumes, store, namespaces
):
    """The claims were deleted, then the restore failed: the message said only 'ended Failed'."""
    lam, _ = namespaces
    backup_component("volumes", target=kube_api_volumes, store=store)
    ctl.restore_outcome = "Failed"
    with pytest.raises(ComponentFailed) as failed:
        data_corruption(lam, target=kube_api_volumes, store=store)
    (forensic,) = [m.id for m in list_backups(store, "volumes") if m.kind == "forensic"]
    assert "were deleted" in str(failed.value) and forensic in str(failed.value)
    assert "data_corruption(" in str(failed.value)
