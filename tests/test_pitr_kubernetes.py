"""Kubernetes PITR: the catalog picks the newest backup at or before the target; the plan says
how far before; the last test restores through Velero on the emulated API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.errors import BadInput, NotFound
from tasks.ids import new_backup_id
from tasks.storage.session import BackupSession


def _kubernetes_backup(store, taken: datetime) -> str:
    """A real manifest of component 'kubernetes', as if Velero's backup was taken at `taken`."""
    session = BackupSession(store, "kubernetes")
    session.started_at = taken  # simulate an older backup: its id and folder carry its time
    session.id = new_backup_id("kubernetes", taken)
    session.write("velero-backup.json", [b'{"kind": "Backup"}'])
    session.source_time = taken
    session.engine["velero_backup"] = f"klb-{session.id}"
    return session.commit().id


@pytest.fixture
def k8s_store(local_store):
    store = local_store()
    now = datetime.now(UTC).replace(microsecond=0)
    ids = {h: _kubernetes_backup(store, now - timedelta(hours=h)) for h in (6, 4, 2)}
    return store, now, ids


def test_plan_picks_the_newest_backup_at_or_before_the_target(prefect_server, k8s_store):
    from flows.pitr import pitr_kubernetes

    store, now, ids = k8s_store
    plan = pitr_kubernetes(now - timedelta(hours=3), store=store, dry_run=True)
    assert plan["backup_id"] == ids[4]
    assert plan["seconds_before_target"] == 3600
    exact = pitr_kubernetes(now - timedelta(hours=2), store=store, dry_run=True)
    assert exact["backup_id"] == ids[2] and exact["seconds_before_target"] == 0


def test_target_before_the_oldest_backup_is_refused(prefect_server, k8s_store):
    from flows.pitr import pitr_kubernetes

    store, now, _ = k8s_store
    with pytest.raises(NotFound, match="no kubernetes backup at or before .* the oldest is"):
        pitr_kubernetes(now - timedelta(hours=7), store=store, dry_run=True)


def test_naive_target_is_refused(prefect_server, k8s_store):
    from flows.pitr import pitr_kubernetes

    store, now, _ = k8s_store
    with pytest.raises(BadInput, match="no time zone"):
        pitr_kubernetes(now.replace(tzinfo=None), store=store, dry_run=True)


@pytest.mark.parametrize("value", [1733000000, 1733000000.0, "1733000000"])
def test_a_number_for_a_time_is_refused_never_read_as_a_unix_time(prefect_server, k8s_store, value):
    from flows.pitr import pitr_kubernetes

    store, _, _ = k8s_store
    with pytest.raises(BadInput, match="is a number, not a time.*YYYY-MM-DDTHH:MM"):
        pitr_kubernetes(value, store=store, dry_run=True)


@pytest.mark.parametrize("fs_backup", [False, True], ids=["snapshots", "fs"])
def test_restores_the_cluster_as_of_the_target_through_velero(
    prefect_server, kube_api, local_store, fs_backup
):
    """The real restore (emulated API + fake Velero): a value changed after the chosen backup comes
    back as it was at the target time; the later backup is not used."""
    import secrets

    from flows.backup import backup_component
    from flows.pitr import pitr_kubernetes
    from tests.k8s_helpers import configmap, seed_app, set_configmap

    store = local_store()
    ns = f"pitr-{secrets.token_hex(3)}"
    seed_app(kube_api.controller, ns)
    target = kube_api.velero_target(include_namespaces=[ns], default_volumes_to_fs_backup=fs_backup)
    before = backup_component("kubernetes", target=target, store=store)
    target_time = datetime.now(UTC)
    set_configmap(kube_api, ns, "settings", {"mode": "broken"})
    backup_component("kubernetes", target=target, store=store)  # after the target: must not be used

    result = pitr_kubernetes(
        target_time, target=target, store=store, options={"existing_resource_policy": "update"}
    )
    assert result["backup_id"] == before.id
    assert 0 <= result["seconds_before_target"] < 60
    assert configmap(kube_api, ns, "settings") == {"mode": "prod"}
