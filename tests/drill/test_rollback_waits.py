"""Rollbacks against what happened since they were asked: a rollback that waited for the component
lock, a restore whose rollback was itself rolled back. A rollback changes nothing unless what it
checked still holds, and never says "rolled back" of a restore that is in place."""

from __future__ import annotations

import time

import pytest
from prefect.flow_runs import resume_flow_run

from flows.backup import backup_component
from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
from tasks.errors import BadInput
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
