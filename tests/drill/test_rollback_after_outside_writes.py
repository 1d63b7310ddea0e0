"""A restore made outside the checklist (restore_component, a DR scenario, rollback_postgres) into
the target of an earlier checklist restore: the rollback of that earlier restore would put its
safety backup back over the later write. Each such write now leaves a restore record, so the
rollback is refused naming it (the Kubernetes and PostgreSQL cases: tests/test_written_records.py)."""

from __future__ import annotations

import pytest

from flows.backup import backup_component
from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
from flows.restore import restore_component
from tasks.errors import BadInput
from tasks.operations.rollback_checks import check_nothing_later
from tests.drill.conftest import Prod

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_a_restore_component_after_a_checklist_restore_blocks_its_rollback(local_store, prod, tmp_path):
    """Before: restore_component wrote no record; rollback_restore(A) put A's safety backup back
    over B's restore without a word. A restore into another target (C) does not block it."""
    store = local_store()
    target = prod.target()
    other = Prod(tmp_path / "other")
    good = backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"state before A\n")
    a = restore_with_checklist("app-state", target=target, store=store)
    c = restore_component("app-state", backup_id=good.id, target=other.target(), store=store)
    check_nothing_later(store, load_restore_record(store, a.id))  # another target: nothing in the way
    prod.file.write_bytes(b"written after A\n")
    b = restore_component("app-state", backup_id=good.id, target=target, store=store)
    in_place = prod.file.read_bytes()
    assert prod.restores == 2

    state = rollback_restore(a.id, target=target, store=store, return_state=True)

    assert state.is_failed(), "the rollback of A undid B's restore"
    assert prod.file.read_bytes() == in_place and prod.restores == 2
    with pytest.raises(BadInput) as refused:
        state.result()
    message = str(refused.value)
    assert f"{b['restore_id']} restored app-state into the same target after {a.id}" in message
    assert "restore-component" in message and "restore_with_checklist" in message
    assert c["restore_id"] not in message
    assert load_restore_record(store, a.id).status == "restored"
    written = load_restore_record(store, b["restore_id"])
    assert (written.via, written.status, written.safety_backup_id) == ("restore-component", "restored", None)
    assert written.target_digest == load_restore_record(store, a.id).target_digest
    assert written.locked_at is not None and written.backup_id == good.id
