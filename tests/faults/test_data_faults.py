"""Damaged backups: the restore refuses before the target is touched, naming what is wrong.

DAMAGES is the table: how a stored backup is damaged and the precise error it must give. Every
row runs through the restore-component flow against an app-state target whose current state is
a file; the file must be untouched and the restore script must never have run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from flows.restore import restore_component
from tasks.backends import backend_for
from tasks.catalog import list_backups
from tasks.codec import HEADER_LEN, RECORD
from tasks.models import MANIFEST_NAME, Manifest
from tasks.store import backup_prefix, backup_session
from tests.faults.helpers import app_target, dir_state

OLD_STATE = b"the state before any restore\n"


def _manifest_key(store, manifest: Manifest) -> str:
    return f"{backup_prefix(store, manifest.id)}/{MANIFEST_NAME}"


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
    if data.startswith(b"KLBENC1"):
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
    assert dir_state(Path(store.path)) == before
    if case.name == "manifest-missing":
        assert list_backups(store, "app-state") == []  # objects without a manifest are no backup
