"""A checklist restore whose flow process dies (SIGKILL) in the middle of the restore step: the
record it leaves says so, and rollback_restore puts its safety backup back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import suppress

import pytest

from flows.backup import backup_component
from flows.recovery import load_restore_record, rollback_restore
from sandbox.services import ROOT
from tasks.storage.backends import backend_for

pytestmark = pytest.mark.usefixtures("prefect_server")

# the arguments travel in the environment (a target may hold a secret: never argv)
CHILD = """
import json, os
from blocks.app_state import AppStateTarget
from blocks.store import LocalStore
from flows.recovery import restore_with_checklist
args = json.loads(os.environ["KLB_TEST_RESTORE"])
restore_with_checklist("app-state", target=AppStateTarget.model_validate(args["target"]),
                       store=LocalStore.model_validate(args["store"]))
"""
# the first time ($PROD.die exists): writes part of the new state over production, then kills
# the flow process (its parent); after: a plain restore (the rollback's)
HALF_AND_DIE = [
    "sh",
    "-c",
    'if test -e "$PROD.die"; then rm "$PROD.die"; head -c 100 > "$PROD"; kill -9 $PPID; sleep 5; fi; '
    'cat > "$PROD.new" && mv "$PROD.new" "$PROD"',
]


def _free_the_dead_runs_slot() -> None:
    """The killed run holds the component lock until its lease expires; the operator's shortcut
    (`prefect gcl delete klb-component-app-state`)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.locks import lock_name

    with get_client(sync_client=True) as client, suppress(ObjectNotFound):
        client.delete_global_concurrency_limit_by_name(lock_name("app-state"))


def test_a_checklist_restore_killed_mid_restore_can_be_rolled_back(local_store, prod):
    """Before: the record was stored only when the restore ended, so the dead run left none, the
    target half-restored, and rollback_restore(<its id>) said 'no restore'."""
    from prefect.settings import PREFECT_API_URL

    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"the state before the restore\n")
    target.steps[0].restore_command = HALF_AND_DIE
    prod.file.with_name(prod.file.name + ".die").touch()
    args = {"target": target.model_dump(mode="json"), "store": store.model_dump(mode="json")}
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PYTHONPATH": str(ROOT),
        "KLB_TEST_RESTORE": json.dumps(args),
    }
    try:
        run = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, timeout=300
        )
        assert run.returncode == -9, run.stderr.decode()[-2000:]
    finally:
        _free_the_dead_runs_slot()
    assert prod.file.read_bytes() != b"the state before the restore\n"  # half-restored

    keys = [k for k in backend_for(store).list_keys(store.prefix) if k.endswith("/record.json")]
    assert len(keys) == 1
    record = load_restore_record(store, keys[0].split("/")[-2])
    assert record.status == "running" and record.safety_backup_id

    rolled = rollback_restore(record.id, target=target, store=store)

    assert rolled.status == "rolled back" and load_restore_record(store, record.id).rolled_back_by
    assert prod.file.read_bytes() == b"the state before the restore\n"
