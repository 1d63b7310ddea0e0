"""Kubernetes PITR: the catalog picks the newest backup at or before the target; the plan says
how far before. The restore itself belongs to the kubernetes component (issue #5): dry runs here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.errors import BadInput, NotFound
from tasks.ids import new_backup_id
from tasks.store import BackupSession, backup_prefix


def _kubernetes_backup(store, taken: datetime) -> str:
    """A real manifest of component 'kubernetes', as if Velero's backup was taken at `taken`."""
    session = BackupSession(store, "kubernetes")
    session.started_at = taken  # simulate an older backup: its id and folder carry its time
    session.id = new_backup_id("kubernetes", taken)
    session.prefix = backup_prefix(store, session.id)
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
