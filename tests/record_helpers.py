"""Records as the project writes them, for the tests of signed records (tests/test_record_signatures.py,
tests/faults/test_forged_records.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from tasks.ids import new_backup_id
from tasks.operations.drills import ComponentDrill, DrillRecord, new_drill_id
from tasks.operations.drills import Status as DrillStatus

APP = "app-state"


def drill(started: datetime, passed: bool = True) -> DrillRecord:
    return DrillRecord(
        id=new_drill_id(started),
        started_at=started,
        finished_at=started + timedelta(seconds=5),
        rto_target_minutes=30,
        rpo_target_hours=6,
        rpo_window_hours=24,
        components=[
            ComponentDrill(
                component=APP,
                status=DrillStatus.verified if passed else DrillStatus.failed,
                backup_id=new_backup_id(APP, started - timedelta(minutes=1)),
                rto_seconds=1.5,
                size=1000,
                reason=None if passed else "the restore did not verify",
            )
        ],
        rto_seconds=1.5,
        rpo_seconds=60.0,
        worst_gap_seconds=60.0,
        failures=[] if passed else ["app-state: the restore did not verify"],
    )
