"""Live progress: a backup and a restore report bytes and objects through a Prefect progress
artifact (read back from the server) and log lines, throttled."""

from __future__ import annotations

import logging
import re

import pytest

from tasks.storage import progress
from tests.console_helpers import app_target, files, sample_dir


def _artifacts(key: str, state):
    """The artifacts with `key` of the flow run that ended in `state`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])
            )
        )


def test_backup_and_restore_progress_artifacts(prefect_server, tmp_path, local_store, monkeypatch):
    from flows.backup import backup_component
    from flows.restore import restore_component

    monkeypatch.setenv("KLB_PROGRESS_SECONDS", "0")  # report on every chunk: the updates are seen
    src = sample_dir(tmp_path, size=5 * 1024 * 1024 + 3)
    target, store = app_target(src, tmp_path / "restored"), local_store()
    state = backup_component("app-state", target, store, return_state=True)
    result = state.result()
    (art,) = _artifacts("progress-backup-app-state", state)
    assert art.type == "progress" and float(art.data) == 100.0
    assert art.task_run_id is not None  # attached to the backup task run
    assert "backup of app-state" in art.description and "1 object(s) done" in art.description
    assert "5.0 MiB streamed" in art.description  # 5 MiB of tar, counted once (not the read-back)

    state = restore_component("app-state", result.id, target, store, return_state=True)
    (art,) = _artifacts("progress-restore-app-state", state)
    assert art.type == "progress" and float(art.data) == 100.0
    assert f"restore of {result.id}" in art.description and "1 object(s) done" in art.description
    # the stored bytes read, out of the stored size (the checking read before it is not counted)
    done, total = re.search(r": (.+) of (.+) streamed", art.description).groups()
    assert done == total
    assert files(tmp_path / "restored") == files(src)


def test_a_failed_stream_says_so_and_keeps_its_percentage(prefect_server, tmp_path, local_store):
    from blocks.app_state import AppStateStep, AppStateTarget
    from flows.backup import backup_component

    target = AppStateTarget(
        steps=[AppStateStep(name="x", backup_command=["sh", "-c", "head -c 100000 /dev/zero; exit 3"],
                            restore_command=["true"])]
    )  # fmt: skip
    state = backup_component("app-state", target, local_store(), return_state=True)
    assert state.is_failed()
    (art,) = _artifacts("progress-backup-app-state", state)
    assert art.description.endswith("(FAILED)") and float(art.data) < 100.0


def test_log_lines_are_throttled(caplog):
    caplog.set_level(logging.INFO, logger=progress.__name__)
    with progress.tracking("backup of x", "progress-x") as p:
        p.interval = 3600.0  # no periodic line within this test: only the final one
        tick = progress.ticker(progress.current())
        for _ in range(100):
            tick(1024)
    lines = [r.getMessage() for r in caplog.records if r.name == progress.__name__]
    assert lines == ["backup of x: 100.0 KiB streamed, 0 object(s) done"]
    caplog.clear()
    with progress.tracking("restore of y", "progress-y", total_bytes=4096) as p:
        p.interval = 0.0
        for _ in range(4):
            progress.ticker(progress.current())(1024)
    lines = [r.getMessage() for r in caplog.records if r.name == progress.__name__]
    assert len(lines) == 5 and lines[1] == "restore of y: 2.0 KiB of 4.0 KiB streamed, 0 object(s) done"


def test_no_tracking_is_a_no_op():
    assert progress.current() is None
    progress.ticker(progress.current())(123)  # nothing to count into, nothing raised


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 2**30, "5.0 GiB")]
)
def test_human_bytes(n, text):
    assert progress.human_bytes(n) == text
