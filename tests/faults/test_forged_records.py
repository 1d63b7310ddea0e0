"""A writer with access to the bucket but not to the store's encryption key forges the records
beside the backups (tasks/storage/records.py): a drill that passed, an older recovery point
dated newest, a restore record that points a rollback at another backup or claims a later
restore. On a store with a key every record is signed (tasks/storage/signing.py) and one no key
of the store signed there never counts: not in the drill history, the drill report, `klb
status` or the restore estimates; never 'latest'; never what a rollback acts on. The sweep names
each. The forgeries are written as the intruder can: through a block of the same place without
the key, or straight into the store's JSON through the backend.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from flows.backup import backup_component
from flows.console.status import status
from flows.drill import last_drill_report
from flows.maintenance import verify_backups
from flows.recovery import restore_with_checklist, rollback_restore
from tasks.errors import IntegrityError
from tasks.ids import new_backup_id
from tasks.operations.drills import list_drill_records, save_drill_record
from tasks.operations.plan import restore_history
from tasks.operations.recovery import (
    LABEL,
    RecoveryPoint,
    get_recovery_point,
    new_recovery_point_id,
    write_recovery_point,
)
from tasks.operations.restores import load_restore_record, record_key_of
from tasks.storage.backends import backend_for
from tasks.storage.health import Status, finding
from tasks.storage.layout import layout
from tasks.storage.records import put_record
from tasks.storage.session import BackupSession
from tests.drill.conftest import Prod
from tests.faults.helpers import random_secret
from tests.faults.test_catalog_truth import APP, failed_with
from tests.record_helpers import drill


@pytest.fixture(params=["local", "s3"])
def keyed(request, prefect_server):
    """(store factory, a store with a key) on each backend: the factory makes blocks on the same
    directory or bucket (without a key: the intruder's view)."""
    make = request.getfixturevalue("local_store" if request.param == "local" else "s3_store")
    return make, make(encryption_key=SecretStr(random_secret("key")))


def _rewrite(store, key: str, **changes) -> None:
    """What a writer of the bucket can do to a stored record: change its JSON, signature kept."""
    backend = backend_for(store)
    data = json.loads(backend.get_bytes(key))
    backend.put_bytes(key, json.dumps({**data, **changes}, indent=2).encode())


def _errors(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


@pytest.mark.fault(
    "catalog",
    "a drill record forged by a writer without the key: a newer drill that PASSED with a fast RTO, "
    "after the real last drill FAILED; then the real record altered to say it passed (signature kept)",
    "neither counts: the drill history, the drill report, `klb status` ('last drill ... FAILED', the "
    "forged record named REFUSED, exit 1) and "
    "the restore estimates hold only the real drill, each refusal logged naming the record; the "
    "sweep fails naming the forged record; the altered real one is refused as not matching",
)
def test_a_forged_passing_drill_never_counts(keyed, caplog):
    make, store = keyed
    real = save_drill_record(store, drill(datetime.now(UTC) - timedelta(hours=2), passed=False))
    forged = save_drill_record(make(), drill(datetime.now(UTC) - timedelta(minutes=5), passed=True))

    with caplog.at_level(logging.ERROR):
        assert [r.id for r in list_drill_records(store)] == [real.id]
    assert forged.key in _errors(caplog) and "is not signed" in _errors(caplog)
    assert last_drill_report(store).startswith(f"Restore drill {real.id}")
    text, healthy = status(store, [APP])
    assert f"last drill: {real.id}" in text and "FAILED" in text and not healthy
    assert f"REFUSED drill record {forged.key}: " in text and f"drill {forged.id}" not in text
    assert APP not in restore_history(store)  # the forged drill's RTO is no sample of anything

    st = verify_backups(store=store, return_state=True)
    failed_with(st, "IntegrityError", forged.key)

    _rewrite(store, real.key, failures=[], components=[c.model_dump(mode="json") for c in forged.components])
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert list_drill_records(store) == []
    assert real.key in _errors(caplog) and "does not match its content" in _errors(caplog)


def _point(store, age: timedelta) -> str:
    """A recovery point of one real app-state backup (labelled with it), taken `age` ago."""
    started = datetime.now(UTC) - age
    rp_id = new_recovery_point_id(started)
    session = BackupSession(store, APP, {LABEL: rp_id})
    session.started_at = session.source_time = started
    session.id = new_backup_id(APP, started)
    session.write("sessions", [f"state at {started}".encode()])
    write_recovery_point(store, rp_id, {APP: session.commit()})
    return rp_id


@pytest.mark.fault(
    "catalog",
    "an older recovery point's record rewritten to be dated newest and resealed (its checksum "
    "recomputed, signature kept); a new point forged whole, unsigned, naming the newest backups",
    "'latest' stays the real newest point; the rewritten one is refused 'is not signed by any key of "
    "this store' and recorded damaged; the forged one makes 'latest' fail naming it (never a silent "
    "fall-back) and is not recorded as damage",
)
def test_an_older_recovery_point_dated_newest_is_refused(keyed):
    make, store = keyed
    older, newer = _point(store, timedelta(hours=2)), _point(store, timedelta(hours=1))
    assert get_recovery_point(store).id == newer
    key = layout(store).recovery_point_key(older)
    data = json.loads(backend_for(store).get_bytes(key))
    moved = RecoveryPoint.model_validate(data).model_copy(
        update={"created_at": datetime.now(UTC) + timedelta(minutes=1)}
    )
    _rewrite(store, key, created_at=moved.created_at.isoformat(), checksum=moved.computed_checksum())

    assert get_recovery_point(store).id == newer
    with pytest.raises(IntegrityError, match=f"{older}.* is not signed by any key of this store"):
        get_recovery_point(store, older)
    assert finding(store, older).status == Status.damaged

    forged_id = new_recovery_point_id()
    real = get_recovery_point(store, newer)
    fake = RecoveryPoint(id=forged_id, created_at=datetime.now(UTC), members=real.members)
    put_record(
        make(),
        layout(store).recovery_point_key(forged_id),
        fake.model_copy(update={"checksum": fake.computed_checksum()}),
    )
    with pytest.raises(IntegrityError, match=f"newest recovery point {forged_id} .*is not signed"):
        get_recovery_point(store)
    assert finding(store, forged_id) is None


@pytest.mark.fault(
    "catalog",
    "a real restore's record rewritten to name another (older) backup as its safety backup, "
    "signature kept, then stripped; then, the record put back, a later restore into the same "
    "target forged whole",
    "the rollback fails 'is not signed' and production is untouched; with the real record back, "
    "the forged later restore does not stop the rollback (left out, logged): it puts back the "
    "real safety backup",
)
def test_a_forged_restore_record_cannot_steer_or_stop_a_rollback(
    local_store, prefect_server, tmp_path, caplog
):
    store = local_store(encryption_key=SecretStr(random_secret("key")))
    prod = Prod(tmp_path / "prod")
    target = prod.target()
    picked = backup_component(APP, target=target, store=store)  # the intruder's pick: older data
    prod.file.write_bytes(b"state B\n")
    wanted = backup_component(APP, target=target, store=store)
    prod.file.write_bytes(b"state just before the restore\n")
    record = restore_with_checklist(APP, backup_id=wanted.id, target=target, store=store)
    assert prod.file.read_bytes() == b"state B\n" and prod.restores == 1
    key = record_key_of(store, record.id)
    genuine = backend_for(store).get_bytes(key)

    _rewrite(store, key, safety_backup_id=picked.id)
    st = rollback_restore(record.id, target=target, store=store, return_state=True)
    failed_with(st, "IntegrityError", "is not signed by any key of this store")
    data = json.loads(backend_for(store).get_bytes(key))
    data.pop("signature")
    backend_for(store).put_bytes(key, json.dumps(data).encode())
    st = rollback_restore(record.id, target=target, store=store, return_state=True)
    failed_with(st, "IntegrityError", "is not signed")
    assert prod.file.read_bytes() == b"state B\n" and prod.restores == 1

    backend_for(store).put_bytes(key, genuine)
    later_id = new_backup_id("restore", datetime.now(UTC) + timedelta(seconds=2))
    later = record.model_copy(update={"id": later_id, "backup_id": picked.id, "safety_backup_id": None})
    put_record(local_store(), record_key_of(store, later_id), later)
    with pytest.raises(IntegrityError, match="is not signed"):
        load_restore_record(store, later_id)
    with caplog.at_level(logging.ERROR):
        rolled = rollback_restore(record.id, target=target, store=store)
    assert later_id in _errors(caplog)
    assert rolled.status == "rolled back"
    assert prod.file.read_bytes() == b"state just before the restore\n"
