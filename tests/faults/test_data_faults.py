"""Damaged backups: the restore refuses before the target is touched, naming what is wrong.

DAMAGES is the table: how a stored backup is damaged and the precise error it must give. Every
row runs through the restore-component flow against an app-state target whose current state is
a file; the file must be untouched and the restore script must never have run.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from flows.restore import restore_component
from tasks.errors import BadInput, NotFound
from tasks.ids import new_backup_id
from tasks.models import Manifest
from tasks.storage.backends import backend_for
from tasks.storage.catalog import backup_at_or_before, get_backup, latest_backup, list_backups
from tasks.storage.codec import HEADER_LEN, MAGIC, RECORD
from tasks.storage.health import Status, finding
from tasks.storage.layout import backup_prefix, layout
from tasks.storage.session import BackupSession, backup_session
from tests.faults.helpers import app_target, dir_state

OLD_STATE = b"the state before any restore\n"


def _manifest_key(store, manifest: Manifest) -> str:
    return layout(store).manifest_key(manifest.id)


def _rewrite(store, key: str, change: Callable[[bytes], bytes]) -> None:
    backend = backend_for(store)
    backend.put_bytes(key, change(backend.get_bytes(key)))


def _lie(store, manifest: Manifest, **fields) -> None:
    """Rewrite the manifest with different object facts and a valid checksum (re-sealed), so
    only reading the object itself can catch the lie."""
    obj = manifest.objects[0].model_copy(update=fields)
    forged = manifest.model_copy(update={"objects": [obj], "checksum": None}).sealed()
    backend_for(store).put_bytes(_manifest_key(store, manifest), forged.model_dump_json().encode())


def _flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x10
    return bytes(out)


def _swap_records(data: bytes) -> bytes:
    """Swap the first two encrypted records (each 256 KiB + tag), or two halves of plain data."""
    if data.startswith(MAGIC):
        head, a, b, rest = (
            data[:HEADER_LEN],
            data[HEADER_LEN : HEADER_LEN + RECORD],
            data[HEADER_LEN + RECORD : HEADER_LEN + 2 * RECORD],
            data[HEADER_LEN + 2 * RECORD :],
        )
        return head + b + a + rest
    half = len(data) // 2
    return data[half:] + data[:half]


@dataclass(frozen=True)
class Damage:
    name: str
    fault: str
    damage: Callable[[object, Manifest], None]  # (store, manifest) -> None
    error: str  # exception class name in the flow's failure message
    message: str  # fragment of the message ("{key}" = the object's key)
    encrypted: bool = False
    compression: str = "none"  # plain bytes make each check's message deterministic
    category: str = "data"
    # recorded as damaged (tasks/storage/health.py), also when an encrypted record fails: the
    # object names its key by id, so a held key that fails proves the data altered (a key the
    # store does not hold is KeyNotHeld, never damage); not when there is no backup at all
    recorded: bool = True

    @property
    def store_options(self) -> dict:
        key = {"encryption_key": SecretStr("k-" + "x" * 20)} if self.encrypted else {}
        return {"compression": "zstd" if self.encrypted else self.compression, **key}

    @property
    def outcome(self) -> str:
        return f"restore flow Failed with {self.error} '{self.message}'; target untouched"


def _obj_key(store, m: Manifest) -> str:
    return m.objects[0].key


DAMAGES = [
    Damage(
        "truncated",
        "the object lost its last 1,000 bytes",
        lambda s, m: _rewrite(s, _obj_key(s, m), lambda d: d[:-1000]),
        "IntegrityError",
        "{key}: stored size",
    ),
    Damage(
        "extended",
        "the object got 10 bytes appended",
        lambda s, m: _rewrite(s, _obj_key(s, m), lambda d: d + b"0123456789"),
        "IntegrityError",
        "{key} is larger than its manifest says",
    ),
    Damage(
        "bit-flip",
        "one bit flipped in the middle of the object",
        lambda s, m: _rewrite(s, _obj_key(s, m), _flip),
        "IntegrityError",
        "{key}: sha256 does not match the manifest (object corrupted)",
    ),
    Damage(
        "re-ordered",
        "the two halves of the object swapped",
        lambda s, m: _rewrite(s, _obj_key(s, m), _swap_records),
        "IntegrityError",
        "{key}: sha256 does not match the manifest (object corrupted)",
    ),
    Damage(
        "bit-flip-encrypted",
        "one bit flipped in an encrypted object",
        lambda s, m: _rewrite(s, _obj_key(s, m), _flip),
        "IntegrityError",
        "decryption failed: the encryption key is wrong, or the object was altered",
        encrypted=True,
    ),
    Damage(
        "re-ordered-encrypted",
        "two AES-GCM records of an encrypted object swapped",
        lambda s, m: _rewrite(s, _obj_key(s, m), _swap_records),
        "IntegrityError",
        "decryption failed: the encryption key is wrong, or the object was altered, truncated or re-ordered",
        encrypted=True,
    ),
    Damage(
        "truncated-encrypted",
        "an encrypted object lost its final record",
        lambda s, m: _rewrite(s, _obj_key(s, m), lambda d: d[: HEADER_LEN + RECORD]),
        "IntegrityError",
        "decryption failed",
        encrypted=True,
    ),
    Damage(
        "truncated-zstd",
        "a zstd-compressed object lost its last 1,000 bytes",
        lambda s, m: _rewrite(s, _obj_key(s, m), lambda d: d[:-1000]),
        "IntegrityError",
        "{key}: zstd stream is truncated",
        compression="zstd",
    ),
    Damage(
        "manifest-size-lie",
        "the manifest (re-sealed) says the object is 1 byte smaller",
        lambda s, m: _lie(s, m, size=m.objects[0].size - 1),
        "IntegrityError",
        "{key} is larger than its manifest says",
    ),
    Damage(
        "manifest-hash-lie",
        "the manifest (re-sealed) carries another sha256 for the object",
        lambda s, m: _lie(s, m, sha256="0" * 64),
        "IntegrityError",
        "{key}: sha256 does not match the manifest (object corrupted)",
    ),
    Damage(
        "manifest-raw-hash-lie",
        "the manifest (re-sealed) carries another sha256 of the decoded stream",
        lambda s, m: _lie(s, m, raw_sha256="f" * 64),
        "IntegrityError",
        "{key}: decoded content does not match the manifest",
    ),
    Damage(
        "manifest-altered",
        "the manifest edited without re-sealing (size changed)",
        lambda s, m: _rewrite(s, _manifest_key(s, m), lambda d: d.replace(b'"size": ', b'"size": 1', 1)),
        "IntegrityError",
        "was altered: its checksum does not match its content",
    ),
    Damage(
        "object-missing",
        "the manifest's object was deleted",
        lambda s, m: backend_for(s).delete_keys([_obj_key(s, m)]),
        "NotFound",
        "object {key} is missing from the local store",
    ),
    Damage(
        "manifest-missing",
        "the manifest was deleted (objects without a manifest)",
        lambda s, m: backend_for(s).delete_keys([_manifest_key(s, m)]),
        "NotFound",
        "no backup {id} in",
        recorded=False,
    ),
]


def take(store, payload: bytes | None = None) -> Manifest:
    with backup_session(store, "app-state") as session:
        session.write("sessions", [payload or os.urandom(1024 * 1024)])
        return session.commit()


@pytest.fixture
def restorable(local_store, tmp_path):
    """(store factory, target, state file): one app-state step whose state is a file."""
    target = app_target(tmp_path / "steps", mib=1)
    state = tmp_path / "steps" / "sessions.restored"
    state.write_bytes(OLD_STATE)
    return local_store, target, state


@pytest.mark.parametrize("case", DAMAGES, ids=lambda c: c.name)
def test_damaged_backup_is_refused_before_the_target_is_touched(case, prefect_server, restorable):
    make_store, target, state = restorable
    store = make_store(**case.store_options)
    manifest = take(store)
    case.damage(store, manifest)
    before = dir_state(Path(store.path))
    st = restore_component("app-state", backup_id=manifest.id, target=target, store=store, return_state=True)
    assert st.is_failed()
    expected = case.message.format(key=manifest.objects[0].key, id=manifest.id)
    assert st.message.startswith(f"Flow run encountered an exception: {case.error}: ")
    assert expected in st.message
    assert state.read_bytes() == OLD_STATE and not state.with_suffix(".restored.new").exists()
    # nothing changed but the record of what the failed read found (tasks/storage/health.py)
    health = layout(store).health_key(manifest.id)
    after = dir_state(Path(store.path))
    assert {k: v for k, v in after.items() if k != health} == before
    if case.name == "manifest-missing":
        assert list_backups(store, "app-state") == []  # objects without a manifest are no backup
    if case.recorded:
        assert finding(store, manifest.id).status == Status.damaged
    else:
        assert health not in after


# --- clock skew --------------------------------------------------------------------------------


def _skewed(store, source_shift: timedelta, start_shift: timedelta = timedelta(0)) -> Manifest:
    """A backup whose engine clock (source time) and/or runner clock (id, start) were wrong."""
    session = BackupSession(store, "app-state")
    if start_shift:
        session.started_at += start_shift
        session.id = new_backup_id("app-state", session.started_at)
    session.source_time = datetime.now(UTC) + source_shift
    session.write("sessions", [b"state"])
    return session.commit()


@pytest.mark.fault(
    "clock",
    "a manifest whose source time is a day in the future (the engine's clock ran ahead)",
    "listed, but never chosen as 'latest' (a warning names it); never returned for a past target time",
)
def test_future_source_time_is_listed_but_never_latest(local_store, caplog):
    store = local_store()
    good = take(store, b"good")
    future = _skewed(store, timedelta(days=1))
    assert [m.id for m in list_backups(store, "app-state")] == [good.id, future.id]
    with caplog.at_level(logging.WARNING, logger="tasks.storage.catalog"):
        assert latest_backup(store, "app-state").id == good.id
        assert get_backup(store, "latest", "app-state").id == good.id
    assert f"backup {future.id} has a source time in the future" in caplog.text
    assert backup_at_or_before(store, "app-state", datetime.now(UTC)).id == good.id
    assert get_backup(store, future.id).id == future.id  # still restorable by id


@pytest.mark.fault(
    "clock",
    "the only backups have source times in the future",
    "NotFound 'every app-state backup ... has a source time in the future (clock skew): check the "
    "clocks, then restore one by id: <ids>'",
)
def test_only_future_backups_give_a_clear_error(local_store):
    store = local_store()
    future = _skewed(store, timedelta(hours=2))
    with pytest.raises(NotFound, match=rf"has a source time in the future \(clock skew\).*{future.id}"):
        latest_backup(store, "app-state")


@pytest.mark.fault(
    "clock",
    "a backup whose id and start time are a day ahead (the runner's clock ran ahead)",
    "excluded from backup_at_or_before(now) and from 'latest'; still listed",
)
def test_future_backup_id_is_never_picked_for_now(local_store):
    store = local_store()
    good = take(store, b"good")
    ahead = _skewed(store, timedelta(days=1), start_shift=timedelta(days=1))
    assert ahead.id > good.id and {m.id for m in list_backups(store, "app-state")} == {good.id, ahead.id}
    assert backup_at_or_before(store, "app-state", datetime.now(UTC)).id == good.id
    assert latest_backup(store, "app-state").id == good.id


@pytest.mark.fault(
    "clock",
    "a restore target time in the future (an hour from now)",
    "BadInput 'target time ... is in the future: give a time up to now (with its time zone), "
    "or ask for latest'",
)
def test_target_time_in_the_future_is_refused(local_store):
    store = local_store()
    take(store, b"good")
    when = datetime.now(UTC) + timedelta(hours=1)
    message = f"target time {when.isoformat()} is in the future: give a time up to now"
    with pytest.raises(BadInput, match=re.escape(message)):
        backup_at_or_before(store, "app-state", when)


@pytest.mark.fault(
    "data",
    "leftovers of failed backups that could not clean up: objects without a manifest and partial "
    "files, one set 2 days old and one from a backup still running",
    "the enforce-retention flow removes the old leftovers and keeps the live backup's files and every "
    "complete backup",
)
def test_retention_flow_sweeps_old_leftovers_only(prefect_server, local_store):
    from flows.maintenance import enforce_retention

    store = local_store()
    good = take(store, b"good")
    backend = backend_for(store)
    old_id = new_backup_id("app-state", datetime.now(UTC) - timedelta(days=2))
    live_id = new_backup_id("app-state")
    old_keys = [layout(store).object_key(old_id, "sessions"), layout(store).object_key(old_id, "other")]
    for key in old_keys:
        backend.put_bytes(key, b"orphan")
    partial = Path(store.path) / backup_prefix(store, old_id) / "big.partial-0a1b2c3d"
    partial.write_bytes(b"half")
    old_time = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    os.utime(partial, (old_time, old_time))
    live_key = layout(store).object_key(live_id, "sessions")
    backend.put_bytes(live_key, b"still being written")
    enforce_retention(dry_run=False, components=["app-state"], store=store)
    left = sorted(backend.list_keys(layout(store).component_dir("app-state")))
    assert left == sorted([live_key, *(o.key for o in good.objects), _manifest_key(store, good)])
    assert not partial.exists()
