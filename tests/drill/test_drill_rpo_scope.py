"""The drill's worst gap between good backups counts only backups a restore of the drilled
target could use: a narrower one (taken by a target with fewer steps, databases, namespaces)
holds only part of it, and counted, it hid the gap the whole target really had."""

from __future__ import annotations

import time

import pytest

from blocks.app_state import AppStateStep, AppStateTarget
from flows.backup import backup_component
from flows.drill import restore_drill
from tests.drill.conftest import SINK

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_a_narrower_backup_does_not_hide_the_worst_gap_of_the_whole_target(local_store, prod, drill_tmp):
    store = local_store()
    narrow = prod.target()  # the 'sessions' step only
    extra = AppStateStep(
        name="extra", backup_command=["echo", "extra"], restore_command=["true"], drill_restore_command=SINK
    )
    whole = AppStateTarget(steps=[*narrow.steps, extra])
    first = backup_component("app-state", target=whole, store=store)
    time.sleep(10)
    backup_component("app-state", target=narrow, store=store)  # holds 'sessions' only
    time.sleep(10)
    last = backup_component("app-state", target=whole, store=store)
    gap = (last.source_time - first.source_time).total_seconds()  # the whole target's gap

    record = restore_drill(components=["app-state"], targets={"app-state": whole}, store=store)

    drilled = record.component("app-state")
    assert drilled.backup_id == last.id
    assert drilled.worst_gap_seconds >= gap  # was the narrower backup's halves of it
