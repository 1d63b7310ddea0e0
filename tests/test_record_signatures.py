"""Signed records (tasks/storage/records.py, tasks/storage/signing.py): every kind of record the
project keeps beside the backups is signed on a store with a key and checked on every read, in
one place; beside the attacks through the flows in tests/faults/test_forged_records.py. A store
without a key writes them byte for byte as before."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from tasks.errors import IntegrityError, KeyNotHeld, NotFound
from tasks.ids import new_backup_id
from tasks.operations.drills import save_drill_record
from tasks.operations.full_restore import read_step, run_key, step_key
from tasks.operations.recovery import get_recovery_point, new_recovery_point_id, write_recovery_point
from tasks.operations.restores import RestoreRecord, load_restore_record, mark_safety, record_key_of
from tasks.storage.backends import backend_for
from tasks.storage.codec import key_id
from tasks.storage.health import finding
from tasks.storage.layout import DR_RUNS, DRILLS, RECOVERY_POINTS, RESTORES, layout
from tasks.storage.records import get_record, iter_records, put_record, refused_records
from tests.record_helpers import drill

APP = "app-state"
KEY_A, KEY_B = "key-A-" + secrets.token_hex(8), "key-B-" + secrets.token_hex(8)


def restore_record(restore_id: str, safety: str) -> RestoreRecord:
    return RestoreRecord(
        id=restore_id,
        component=APP,
        backup_id=new_backup_id(APP),
        status="restored",
        started_at=datetime.now(UTC),
        safety_backup_id=safety,
        duration_seconds=2.0,
        target_digest="0" * 64,
    )


# each kind of record, written by the project's own writer: (space, write(store) -> its key)
def _recovery_point(store) -> str:
    rp_id = new_recovery_point_id()
    write_recovery_point(store, rp_id, {}, failed={APP: "it failed"})
    return layout(store).recovery_point_key(rp_id)


def _drill(store) -> str:
    return save_drill_record(store, drill(datetime.now(UTC) - timedelta(minutes=10))).key


def _restore(store) -> str:
    restore_id = new_backup_id("restore")
    return put_record(store, record_key_of(store, restore_id), restore_record(restore_id, new_backup_id(APP)))


def _restore_state(store) -> str:
    key = layout(store).restore_state_key(new_backup_id("restore"))
    return put_record(store, key, {"steps": [{"name": "sessions", "bytes": 12}], "at": datetime.now(UTC)})


def _safety_mark(store) -> str:
    backup_id = new_backup_id(APP)
    mark_safety(store, backup_id, new_backup_id("restore"), "restored", "the state before")
    return layout(store).safety_mark_key(backup_id)


def _dr_run(store) -> str:
    run_id = new_backup_id("dr")
    record = {"run_id": run_id, "recovery_point": new_recovery_point_id(), "created": datetime.now(UTC)}
    return put_record(store, run_key(store, run_id), record)


def _dr_step(store) -> str:
    key = step_key(store, new_backup_id("dr"), 3, "postgres")
    return put_record(store, key, {"step": "postgres", "status": "failed", "error": "ComponentFailed: x"})


KINDS: dict[str, tuple[str, Callable[..., str]]] = {
    "recovery point": (RECOVERY_POINTS, _recovery_point),
    "drill": (DRILLS, _drill),
    "restore record": (RESTORES, _restore),
    "restore state": (RESTORES, _restore_state),
    "safety mark": (RESTORES, _safety_mark),
    "full-cluster-restore run": (DR_RUNS, _dr_run),
    "full-cluster-restore step": (DR_RUNS, _dr_step),
}


def _raw(store, key: str) -> dict:
    return json.loads(backend_for(store).get_bytes(key))


def _put_raw(store, key: str, data: dict) -> None:
    backend_for(store).put_bytes(key, json.dumps(data, indent=2).encode())


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_record_is_signed_and_refused_when_forged(kind, any_store, caplog):
    """Signed by the current key; read back exactly as written; a copy under another key, an
    altered one (signature kept), an unsigned one and one signed by a key the store lacks are
    refused by get_record and left out of iter_records (logged, naming the record), and the
    sweep's list of refused records names them."""
    space, write = KINDS[kind]
    store = any_store(encryption_key=SecretStr(KEY_A))
    plain = any_store()  # the same place, without the key: what a writer of the bucket can do
    key = write(store)
    stored = _raw(store, key)
    assert stored["signature"].startswith(key_id(KEY_A) + ":")
    content = {k: v for k, v in stored.items() if k != "signature"}
    assert get_record(store, key) == content  # the signature is not part of what callers get
    assert [k for k, _ in iter_records(store, space)] == [key]
    assert refused_records(store) == {}

    # copied under another key of the same kind (another restore's, another run's step)
    other = write(plain)
    backend_for(store).put_bytes(other, backend_for(store).get_bytes(key))
    with pytest.raises(IntegrityError, match=f"record {other} is not signed by any key of this store") as exc:
        get_record(store, other)
    assert exc.value.proves_damage
    # altered, its signature kept
    _put_raw(store, other, {**stored, "intruder": "altered"})
    with pytest.raises(IntegrityError, match="does not match its content") as exc:
        get_record(store, other)
    assert exc.value.proves_damage
    # a signature that is no hex at all (compare_digest refuses non-ASCII text)
    _put_raw(store, other, {**stored, "intruder": "altered", "signature": f"{key_id(KEY_A)}:\u00e9t\u00e9"})
    with pytest.raises(IntegrityError, match="does not match its content"):
        get_record(store, other)
    # not signed at all (written by a writer without the key): refused, not proof of damage
    write_plain = write(plain)
    with pytest.raises(
        IntegrityError, match=f"record {write_plain} is not signed.*unsigned_manifests_before"
    ) as exc:
        get_record(store, write_plain)
    assert not exc.value.proves_damage
    # signed by a key the store does not hold
    by_b = write(any_store(encryption_key=SecretStr(KEY_B)))
    with pytest.raises(KeyNotHeld, match=f"signed with key {key_id(KEY_B)}.*holds {key_id(KEY_A)}"):
        get_record(store, by_b)

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert [k for k, _ in iter_records(store, space)] == [key]
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    for refused in (other, write_plain, by_b):
        assert refused in logged
    assert key_id(KEY_B) in logged  # the key it was signed with is named
    if space != RECOVERY_POINTS:  # the sweep scans recovery points on its own
        assert set(refused_records(store)) == {other, write_plain, by_b}
    assert get_record(plain, other)["intruder"] == "altered"  # a store without a key checks nothing


def test_a_store_without_a_key_writes_records_byte_for_byte_as_before(any_store):
    store = any_store()
    record = drill(datetime.now(UTC))
    key = save_drill_record(store, record).key
    assert (
        backend_for(store).get_bytes(key)
        == record.model_copy(update={"key": key}).model_dump_json(indent=2).encode()
    )
    mark = {"backup_id": new_backup_id(APP), "note": "n", "at": datetime.now(UTC)}
    mark_key = layout(store).safety_mark_key(mark["backup_id"])
    put_record(store, mark_key, mark)
    assert (
        backend_for(store).get_bytes(mark_key)
        == json.dumps(mark, indent=2, default=str, sort_keys=True).encode()
    )
    assert "signature" not in get_record(store, mark_key)


def test_unsigned_records_from_before_the_key_are_trusted_only_before_the_operators_time(local_store):
    """As for manifests: refused by default; accepted once unsigned_manifests_before is after the
    time in its key and every time in it; a record at an old key holding a newer time is not."""
    old_restore = _restore(local_store())
    old_drill = _drill(local_store())
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    strict = local_store(encryption_key=SecretStr(KEY_A))
    with pytest.raises(IntegrityError, match="is not signed"):
        get_record(strict, old_drill)
    trusting = local_store(encryption_key=SecretStr(KEY_A), unsigned_manifests_before=cutoff)
    restore_id = old_restore.rsplit("/", 2)[-2]
    assert load_restore_record(trusting, restore_id).id == restore_id
    assert [k for k, _ in iter_records(trusting, DRILLS)] == [old_drill]

    early = local_store(
        encryption_key=SecretStr(KEY_A), unsigned_manifests_before=cutoff - timedelta(hours=1)
    )
    with pytest.raises(IntegrityError, match="is not signed"):
        get_record(early, old_drill)
    # an old key, a newer time inside (a forged record dressed as an old one)
    _put_raw(
        trusting,
        old_drill,
        {**_raw(trusting, old_drill), "finished_at": (cutoff + timedelta(hours=1)).isoformat()},
    )
    with pytest.raises(IntegrityError, match="is not signed"):
        get_record(trusting, old_drill)
    # the option trusts the unsigned only: a signed record that no key signed stays refused
    signed_key = _restore(trusting)
    _put_raw(trusting, signed_key, {**_raw(trusting, signed_key), "status": "failed"})
    with pytest.raises(IntegrityError, match="does not match its content"):
        get_record(trusting, signed_key)


def test_rotation_records_read_while_their_key_is_held(local_store):
    key = _drill(local_store(encryption_key=SecretStr(KEY_A)))
    rotated = local_store(encryption_key=SecretStr(KEY_B), previous_encryption_keys=[SecretStr(KEY_A)])
    assert get_record(rotated, key)["id"]
    new = _drill(rotated)
    assert _raw(rotated, new)["signature"].startswith(key_id(KEY_B) + ":")
    assert [k for k, _ in iter_records(rotated, DRILLS)] == sorted([key, new])
    only_b = local_store(encryption_key=SecretStr(KEY_B))
    with pytest.raises(KeyNotHeld, match=f"signed with key {key_id(KEY_A)}"):
        get_record(only_b, key)


def test_a_forged_full_cluster_restore_step_is_refused_not_skipped(local_store):
    """A resume skips the steps recorded 'done': a forged 'done' must not skip a restore."""
    store = local_store(encryption_key=SecretStr(KEY_A))
    run_id = new_backup_id("dr")
    key = step_key(store, run_id, 2, "kubernetes")
    put_record(local_store(), key, {"step": "kubernetes", "status": "done", "restored": True})
    with pytest.raises(IntegrityError, match=f"record {key} is not signed"):
        read_step(store, key)
    put_record(store, key, {"step": "kubernetes", "status": "failed", "error": "x"})
    assert read_step(store, key)["status"] == "failed"


def test_a_record_may_not_carry_a_field_named_signature(local_store):
    store = local_store(encryption_key=SecretStr(KEY_A))
    with pytest.raises(ValueError, match="signature"):
        put_record(store, layout(store).safety_mark_key(new_backup_id(APP)), {"signature": "mine"})


def test_after_an_upgrade_latest_recovery_point_names_the_unsigned_ones(local_store):
    """Points written before the store signed records are unsigned: 'latest' says so and what to
    do (not just 'run backup-all')."""
    key = _recovery_point(local_store())
    rp_id = key.rsplit("/", 1)[-1].removesuffix(".json")
    upgraded = local_store(encryption_key=SecretStr(KEY_A))
    with pytest.raises(NotFound, match=f"{rp_id}: record .* is not signed.*unsigned_manifests_before"):
        get_recovery_point(upgraded)
    assert finding(upgraded, rp_id) is None  # unsigned is not proof of damage
