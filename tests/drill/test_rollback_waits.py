"""Rollbacks against what happened since they were asked: a rollback that waited for the component
lock, a restore whose rollback was itself rolled back. A rollback changes nothing unless what it
checked still holds, and never says "rolled back" of a restore that is in place."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.flow_runs import resume_flow_run

from flows.backup import backup_component
from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
from tasks.errors import BadInput
from tasks.ids import new_backup_id
from tests.drill.test_approval import GUARD, Running

pytestmark = pytest.mark.usefixtures("prefect_server")


def _waits_for_the_lock(run: Running, seconds: float = 8) -> None:
    """Room for the rollback's checks, made before it takes the lock (it must still be waiting)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert run.thread.is_alive(), f"the rollback ended without waiting for the lock: {run.state}"
        time.sleep(0.2)


def test_a_rollback_that_waited_for_a_later_restore_does_not_undo_it(local_store, prod):
    """Before: the rollback of A checked 'nothing restored into the target since A' before it
    took the lock; restore B, paused for approval under the lock, then ran; the rollback put A's
    safety backup back over B's restore, and B's record still said 'restored'."""
    store = local_store()
    target = prod.target()
    good = backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"state before A\n")
    a = restore_with_checklist("app-state", target=target, store=store)
    assert a.status == "restored"
    prod.file.write_bytes(b"written after A\n")
    b = Running(component="app-state", backup_id=good.id, target=target, store=store, guard=GUARD)
    paused = b.paused_run()
    rollback = Running(flow=rollback_restore, restore_id=a.id, target=target, store=store)
    _waits_for_the_lock(rollback)
    resume_flow_run(paused.id, run_input={"decision": "approve", "by": "alice"})
    b_record = b.wait().result()
    assert b_record.status == "restored" and prod.restores == 2
    restored_by_b = prod.file.read_bytes()

    state = rollback.wait()
    assert state.is_failed()
    with pytest.raises(Exception, match=f"{b_record.id} restored app-state into the same target after"):
        state.result()
    assert prod.file.read_bytes() == restored_by_b and prod.restores == 2
    assert load_restore_record(store, a.id).status == "restored"
    assert load_restore_record(store, b_record.id).status == "restored"


def test_a_restore_whose_rollback_was_rolled_back_is_not_said_to_be_rolled_back(local_store, prod):
    """Before: restore A rolled back by R, R rolled back by R2 (A's data is back in place);
    rollback_restore(A) said 'already rolled back: nothing to do' and returned A's record as
    'rolled back', while the target held what A restored."""
    store = local_store()
    target = prod.target()
    original = prod.file.read_bytes()
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"state before the restore\n")
    a = restore_with_checklist("app-state", target=target, store=store)
    r = rollback_restore(a.id, target=target, store=store).rolled_back_by
    r2 = rollback_restore(r, target=target, store=store).rolled_back_by
    assert prod.file.read_bytes() == original and prod.restores == 3  # A's restore is in place again

    state = rollback_restore(a.id, target=target, store=store, return_state=True)
    assert state.is_failed()
    with pytest.raises(BadInput, match=rf"{r}.* was itself rolled back by {r2}.*rollback_restore\('{r2}'\)"):
        state.result()
    assert prod.file.read_bytes() == original and prod.restores == 3

    rollback_restore(r2, target=target, store=store)  # what the refusal says: A undone again
    assert prod.file.read_bytes() == b"state before the restore\n" and prod.restores == 4
    again = rollback_restore(a.id, target=target, store=store)  # now it is: nothing to do
    assert again.status == "rolled back" and again.rolled_back_by == r and prod.restores == 4


def test_a_window_that_closed_while_the_safety_backup_ran_changes_nothing(local_store, prod, monkeypatch):
    """Before: without approval the window was checked once, before the safety backup; a backup
    that outlasted the window (a big database at 05:59, window ending 06:00) was followed by the
    restore itself, outside the window, in business hours. Checked again right before it now."""
    from datetime import UTC, datetime, timedelta

    from blocks.restore_guard import MaintenanceWindow, RestoreGuard
    from tasks.operations import restore_checklist

    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"current data\n")
    # the safety backup runs until the test lets it end, after moving the restore's clock past the
    # window's end (a backup that really outlasted the window took 30 s here)
    waits = 'touch "$PROD.started"; until [ -e "$PROD.go" ]; do sleep 0.05; done; cat "$PROD"'
    step = target.steps[0].model_copy(update={"backup_command": ["sh", "-c", waits]})
    slow = target.model_copy(update={"steps": [step]})
    now = datetime.now(UTC)
    end = now + timedelta(minutes=10)  # open at the checklist's window item, however slow the run
    window = MaintenanceWindow(start=(now - timedelta(minutes=1)).time(), end=end.time())
    guard = RestoreGuard(window=window)
    run = Running(flow=restore_with_checklist, component="app-state", target=slow, store=store, guard=guard)
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{prod.file}.started").exists():
            assert run.thread.is_alive() and time.monotonic() < deadline, f"no safety backup: {run.state}"
            time.sleep(0.05)
        late = end + timedelta(seconds=1) - datetime.now(UTC)

        class AfterTheWindow(datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime.now(tz) + late

        monkeypatch.setattr(restore_checklist, "datetime", AfterTheWindow)
    finally:
        Path(f"{prod.file}.go").touch()
    state = run.wait()
    assert state.is_failed()
    with pytest.raises(Exception, match="closed while the restore took its safety backup"):
        state.result()
    assert prod.file.read_bytes() == b"current data\n" and prod.restores == 0
    record = load_restore_record(store, _only_record(store))
    assert record.status == "refused" and record.checklist[2].mark.value == "ok"  # open when checked


def _only_record(store) -> str:
    from tasks.storage.backends import backend_for
    from tasks.storage.layout import layout

    keys = list(backend_for(store).list_keys(layout(store).records_dir("restores")))
    ids = {k.rsplit("/", 2)[-2] for k in keys if k.endswith("/record.json")}
    assert len(ids) == 1, ids
    return ids.pop()


def test_a_later_restore_back_in_force_through_a_rolled_back_rollback_blocks_an_earlier_rollback(
    local_store, prod
):
    """Before: restore A, then B; B rolled back by RB, RB rolled back by RB2 (B's data in place
    again). Rolling A back counted RB2 as 'a rollback of a later restore: back to as before' and
    B as 'rolled back', and put A's safety backup over B's data without a word."""
    store = local_store()
    target = prod.target()
    good = backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"state before A\n")
    a = restore_with_checklist("app-state", target=target, store=store)
    prod.file.write_bytes(b"written after A\n")
    b = restore_with_checklist("app-state", backup_id=good.id, target=target, store=store)
    rb = rollback_restore(b.id, target=target, store=store).rolled_back_by
    rb2 = rollback_restore(rb, target=target, store=store).rolled_back_by
    in_place = prod.file.read_bytes()  # what B restored, in force again
    assert prod.restores == 4

    state = rollback_restore(a.id, target=target, store=store, return_state=True)
    assert state.is_failed()
    with pytest.raises(BadInput, match=f"{rb2} restored app-state into the same target after {a.id}"):
        state.result()
    assert prod.file.read_bytes() == in_place and prod.restores == 4
    assert load_restore_record(store, a.id).status == "restored"


def test_a_later_restore_started_in_the_same_second_blocks_the_rollback_of_an_earlier_one(
    local_store, prod, monkeypatch
):
    """Before: restores were ordered by their ids ('ids sort by their start time'); two that start
    in the same second compare by their random suffix, so B (suffix 000000) counted as older than
    A (suffix ffffff), and A's rollback put A's safety backup over B's restore without a word."""
    import flows.recovery as recovery
    from tasks.ids import TS_FORMAT

    second = datetime.now(UTC).strftime(TS_FORMAT)
    suffixes = iter(["ffffff", "000000", "000001", "000002"])
    monkeypatch.setattr(recovery, "new_backup_id", lambda kind, now=None: f"{kind}-{second}-{next(suffixes)}")
    store = local_store()
    target = prod.target()
    good = backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"state before A\n")
    a = restore_with_checklist("app-state", target=target, store=store)
    prod.file.write_bytes(b"written after A\n")
    b = restore_with_checklist("app-state", backup_id=good.id, target=target, store=store)
    assert b.id < a.id  # the same second: the suffixes say nothing of which came first
    in_place = prod.file.read_bytes()

    with pytest.raises(BadInput, match=f"{b.id} restored app-state into the same target after {a.id}"):
        rollback_restore(a.id, target=target, store=store)
    assert prod.file.read_bytes() == in_place and prod.restores == 2
    assert load_restore_record(store, a.id).status == "restored"


def test_restores_are_ordered_by_when_they_took_the_lock_not_by_when_they_started(local_store):
    """Restore B started (its id and start time minted) before rollback R of A, waited for the
    component lock, and R took it first: B changed the target after R. Rolling R back (putting
    back the state before R) would undo B, yet B's start time and id both say it came before R."""
    from tasks.operations.restores import RestoreRecord, record_key_of
    from tasks.operations.rollback_checks import check_nothing_later
    from tasks.storage.records import put_record

    store = local_store()
    t0 = datetime.now(UTC) - timedelta(minutes=10)

    def record(at: timedelta, locked: timedelta, **fields) -> RestoreRecord:
        made = RestoreRecord(
            id=new_backup_id("restore", t0 + at),
            component="app-state",
            backup_id=new_backup_id("app-state", t0 - timedelta(hours=1)),
            status="restored",
            started_at=t0 + at,
            locked_at=t0 + locked,
            safety_backup_id=new_backup_id("app-state", t0 + locked),
            target_digest="0" * 64,
            **fields,
        )
        put_record(store, record_key_of(store, made.id), made)
        return made

    a = record(timedelta(0), timedelta(0))
    b = record(timedelta(minutes=1), timedelta(minutes=4))  # started, then waited for the lock
    r = record(timedelta(minutes=2), timedelta(minutes=3), kind="rollback", rolls_back=a.id)
    a.status, a.rolled_back_by = "rolled back", r.id
    put_record(store, record_key_of(store, a.id), a)

    with pytest.raises(BadInput, match=f"{b.id} restored app-state into the same target after {r.id}"):
        check_nothing_later(store, r)
