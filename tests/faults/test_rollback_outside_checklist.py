"""The restore record of a write made outside the checklist (restore_component here) has no safety
backup: rollback_restore of it is refused, saying so and what to do instead, and changes nothing."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from flows.backup import backup_component
from flows.recovery import load_restore_record, rollback_restore
from flows.restore import restore_component
from tasks.errors import BadInput
from tests.drill.conftest import Prod
from tests.faults.helpers import random_secret


@pytest.mark.fault(
    "bad-input",
    "rollback_restore(<the restore_id of a restore_component run>) (was: no such record: 'no restore')",
    "BadInput: 'ran outside the checklist (restore-component): it took no safety backup ... restore an "
    "older backup ... with restore_with_checklist'; nothing changed",
)
def test_a_restore_made_outside_the_checklist_cannot_be_rolled_back(prefect_server, local_store, tmp_path):
    store = local_store(encryption_key=SecretStr(random_secret("key")))  # its record is signed
    prod = Prod(tmp_path / "prod")
    target = prod.target()
    good = backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"written since\n")
    restored = restore_component("app-state", backup_id=good.id, target=target, store=store)
    record = load_restore_record(store, restored["restore_id"])  # signed by the store's key
    assert (record.via, record.status, record.target_changed) == ("restore-component", "restored", True)
    in_place = prod.file.read_bytes()

    with pytest.raises(BadInput, match=r"ran outside the checklist \(restore-component\).*no safety backup"):
        rollback_restore(restored["restore_id"], target=target, store=store)

    assert prod.file.read_bytes() == in_place and prod.restores == 1
    assert load_restore_record(store, restored["restore_id"]) == record
