"""Scheduled backups as runs: a transient failure is retried within the run (minutes, not the next
slot), the run is named after the component and then the backup, and the manifest records the
flow run that made it."""

from __future__ import annotations

import threading
import time

from prefect.client.orchestration import get_client

from blocks.app_state import AppStateStep, AppStateTarget
from flows.backup import backup_component
from flows.locks import component_lock
from tasks.storage.catalog import get_backup


def _target(tmp_path) -> AppStateTarget:
    state = tmp_path / "state.json"
    state.write_text('{"sessions": 3}')
    step = AppStateStep(name="state", backup_command=["cat", str(state)], restore_command=["true"])
    return AppStateTarget(steps=[step])


def test_run_is_named_after_the_backup_and_the_manifest_records_the_run(
    prefect_server, local_store, tmp_path
):
    store = local_store()
    state = backup_component("app-state", target=_target(tmp_path), store=store, return_state=True)
    result = state.result()
    manifest = get_backup(store, result.id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert manifest.labels["flow_run_id"] == str(run.id)
    assert run.name == f"backup-{result.id}"  # was backup-app-state until the id was known


def test_a_transient_failure_is_retried_within_the_run(prefect_server, local_store, tmp_path, monkeypatch):
    """Another run holds the component's lock past the wait: TransientError, retried after the
    delay, and the backup is made in the same flow run."""
    monkeypatch.setenv("KLB_COMPONENT_LOCK_WAIT_SECONDS", "0.5")
    monkeypatch.setenv("KLB_BACKUP_RETRIES", "2")
    monkeypatch.setenv("KLB_BACKUP_RETRY_DELAY_SECONDS", "1.5")
    held = threading.Event()

    def hold() -> None:
        with component_lock("app-state", timeout_seconds=30):
            held.set()
            time.sleep(2)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    try:
        result = backup_component("app-state", target=_target(tmp_path), store=local_store())
    finally:
        holder.join()
    assert result.verified
