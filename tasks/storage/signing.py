"""Signed manifests and records: on a store with an encryption key, what the catalog says is what
a key of the store signed.

A manifest's checksum proves only that it was not altered by accident: anyone who can write to
the bucket can recompute it. So on a store with an `encryption_key` every manifest written
(a backup's commit, a DR copy) carries `signature` = '<key id>:<HMAC-SHA256 of its body>' (the
body: everything but the checksum and the signature, as the checksum covers it), under a key
derived from the store's current key by scrypt with a salt of its own (not the objects', not the
health records'). Without it a writer of the bucket who lacks the key could write plaintext
objects and a manifest saying `encryption: none`, or put backup B's objects under a manifest
naming backup A, and the catalog, restores and the sweep would take it for a backup.

The small JSON records beside the backups (storage/records.py: recovery points, drills, restore
records and states, safety marks, full-cluster-restore runs and steps) are signed the same way,
in one place (put_record / get_record), under a salt of their own: a forged drill record would
make the drill history and `klb status` say a drill passed, a forged restore record would make a
rollback put back another backup. A record's signature covers its key (relative to the store's
prefix) and its JSON (canonical: sorted keys, no spaces), so a genuine record copied under
another key (another restore's, another run's step) is refused as well.

Every read checks it (manifests: catalog.parse_manifest: get_backup, listings, 'latest',
retention, the sweep, the cached index, which holds manifest bodies and re-checks them; records:
records.get_record and iter_records). On a store with keys:
- a signature under a key the store holds that does not match: refused, and it proves damage
  (forged or altered after it was written): a manifest is recorded against its backup
  (health.py), a recovery point against its id;
- a signature under a key id the store does not hold: KeyNotHeld, not damage (the old key was
  dropped too early explains it as well as forgery does, as for objects);
- no signature: refused, not damage (one from before the store had a key, or from a version
  that did not sign, is unsigned too), unless the operator trusts unsigned ones from before a
  time (the store block's `unsigned_manifests_before`): one whose id and times are all before
  it is accepted, with a warning. Those can be forged too, so only for as long as what was
  written before that time matters (docs/operations.md).
Manifest refusals that are not damage are raised by listings too ('latest' never silently passes
over a newer backup it cannot read); a refused record is left out of every listing of records
(logged), and the sweep names it. A store without a key signs nothing and checks nothing: write
access to it is trust (object lock is what resists a writer there: docs/operations.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from blocks.store import StoreBlock
from tasks.errors import BadInput, IntegrityError, KeyNotHeld, ambiguous_key_error
from tasks.ids import BACKUP_ID_RE, parse_backup_id
from tasks.models import Manifest
from tasks.storage.codec import derive_key, key_id
from tasks.storage.keys import read_keys
from tasks.storage.layout import backup_dir_of

log = logging.getLogger(__name__)
MANIFEST_SALT = b"klb manifest signature v1"  # not the objects' salts, not the health records'
RECORD_SALT = b"klb record signature v1"  # nor the manifests': a manifest's MAC never signs a record
RECORD_FIELD = "signature"  # a record's own fields can never be called this (sign_record refuses)
_warned: set[tuple[str, str]] = set()  # (store, backup id or record key): trusted unsigned, said once


@lru_cache(maxsize=32)
def _signing_key(secret: str, salt: bytes) -> bytes:
    return derive_key(secret, salt)


def _hmac(secret: str, salt: bytes, body: bytes) -> str:
    return hmac.new(_signing_key(secret, salt), body, hashlib.sha256).hexdigest()


def _seal(secrets: list[str], salt: bytes, body: bytes) -> str | None:
    """'<key id>:<hex HMAC>' under the current key; None on a store without keys."""
    return f"{key_id(secrets[0])}:{_hmac(secrets[0], salt, body)}" if secrets else None


@dataclass(frozen=True)
class _Signed:
    """What a check needs to know about one signed thing, manifest or record."""

    where: str  # "manifest <key> (backup <id>)", "record <key>"
    kind: str  # "manifests", "records": what an older version did not sign
    salt: bytes
    body: bytes  # what the signature covers
    signature: str | None
    trusted_unsigned: bool  # the store block trusts it unsigned (its times are before the cutoff)
    remedy: str  # what to do with one that is not what a key of the store signed
    forged_remedy: str  # what to do with one whose signature does not match


def _check(store: StoreBlock, secrets: list[str], item: _Signed) -> None:
    """Return only if a key of the store signed `item`, or the operator trusts it unsigned."""
    if item.signature is None:
        if item.trusted_unsigned:
            if (store.location, item.where) not in _warned:
                _warned.add((store.location, item.where))
                log.warning(
                    "%s is not signed: accepted, as the store block trusts unsigned %s from before %s",
                    item.where,
                    item.kind,
                    store.unsigned_manifests_before.isoformat(),
                )
            return
        raise ambiguous_key_error(
            f"{item.where} is not signed, and this store has an encryption key: forged by someone who "
            "can write to the store, or written before the store had a key or by a version that did "
            f"not sign {item.kind}. If you trust what was written before a time, set the store "
            "block's unsigned_manifests_before to that time (docs/operations.md); else "
            f"{item.remedy}"
        )
    signer, _, mac = item.signature.partition(":")
    held = [s for s in secrets if key_id(s) == signer]
    if not held:
        raise KeyNotHeld(
            f"{item.where} is not signed by any key of this store: it is signed with key {signer} and "
            f"the store holds {', '.join(key_id(s) for s in secrets)}: the encryption key is wrong "
            "(set the key it was written with, or add it to previous_encryption_keys), or it is "
            f"forged (then {item.remedy})"
        )
    # as bytes: compare_digest refuses a str with non-ASCII characters (a forger's choice)
    if not any(hmac.compare_digest(mac.encode(), _hmac(s, item.salt, item.body).encode()) for s in held):
        raise IntegrityError(
            f"{item.where} is not signed by any key of this store: its signature (key {signer}, "
            "which the store holds) does not match its content: forged, or altered after it was "
            f"written; {item.forged_remedy}"
        )


# --- manifests ---------------------------------------------------------------------------------


def _mac(manifest: Manifest, secret: str) -> str:
    return _hmac(secret, MANIFEST_SALT, manifest.body())


def signed(manifest: Manifest, store: StoreBlock) -> Manifest:
    """`manifest` sealed (its checksum) and, on a store with keys, signed with the current one."""
    signature = _seal(read_keys(store), MANIFEST_SALT, manifest.body())
    return manifest.model_copy(update={"signature": signature}).sealed()


def _trusted_unsigned(store: StoreBlock, manifest: Manifest) -> bool:
    before = store.unsigned_manifests_before
    if before is None:
        return False
    times = [parse_backup_id(manifest.id)[1], manifest.started_at, manifest.source_time, manifest.finished_at]
    return all(t < before for t in times)


def check_signature(store: StoreBlock, manifest: Manifest, key: str) -> None:
    """Return only if a key of the store signed `manifest` (read from `key`), or the store has
    no key, or the operator trusts it unsigned; else IntegrityError saying which and what to do."""
    secrets = read_keys(store)
    if not secrets:
        return
    folder = backup_dir_of(key)
    item = _Signed(
        where=f"manifest {key} (backup {manifest.id})",
        kind="manifests",
        salt=MANIFEST_SALT,
        body=manifest.body(),
        signature=manifest.signature,
        trusted_unsigned=manifest.signature is None and _trusted_unsigned(store, manifest),
        remedy=f"delete {folder}/, or restore its manifest from the DR store",
        forged_remedy="restore the backup from the DR store by id, or delete its folder",
    )
    _check(store, secrets, item)


# --- records (storage/records.py) ----------------------------------------------------------------


def _relative(store: StoreBlock, key: str) -> str:
    """A record's key under the store's prefix: what its signature binds it to."""
    return key.removeprefix(store.prefix + "/")


def _record_body(store: StoreBlock, key: str, record: dict[str, Any]) -> bytes:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return _relative(store, key).encode() + b"\n" + canonical.encode()


def sign_record(store: StoreBlock, key: str, body: bytes) -> bytes:
    """What to store at `key` for a record whose JSON is `body`: `body` itself on a store
    without keys (byte for byte as ever), else the record with its `signature` added."""
    secrets = read_keys(store)
    if not secrets:
        return body
    record = json.loads(body)
    if not isinstance(record, dict) or RECORD_FIELD in record:
        raise ValueError(f"record {key}: a record is a JSON object without a field {RECORD_FIELD!r}")
    record[RECORD_FIELD] = _seal(secrets, RECORD_SALT, _record_body(store, key, record))
    return json.dumps(record, indent=2).encode()


_DRILL_ID = re.compile(r"(\d{14})[0-9a-f]{6}")  # tasks/operations/drills.py new_drill_id
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}.*")


def _key_times(relative: str) -> Iterator[datetime]:
    """The times a record's key names: its id's (every record key holds one), its day folder."""
    for part in relative.split("/"):
        name = part.removesuffix(".json")
        try:
            if BACKUP_ID_RE.fullmatch(name):
                yield parse_backup_id(name)[1]
            elif match := _DRILL_ID.fullmatch(name):
                yield datetime.strptime(match[1], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            elif _DAY.fullmatch(name):
                yield datetime.strptime(name, "%Y-%m-%d").replace(tzinfo=UTC)
        except (BadInput, ValueError):
            continue


def _body_times(value: Any) -> Iterator[datetime | None]:
    """Every time written in a record, at any depth (None: one that does not parse)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from _body_times(item)
    elif isinstance(value, str) and _STAMP.fullmatch(value):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            yield None
            return
        yield when if when.tzinfo else when.replace(tzinfo=UTC)


def _trusted_unsigned_record(store: StoreBlock, key: str, record: dict[str, Any]) -> bool:
    """As for manifests: the time in its key and every time in it before the operator's cutoff
    (a record dressed as old, with a newer time inside, is not)."""
    before = store.unsigned_manifests_before
    if before is None:
        return False
    named = list(_key_times(_relative(store, key)))
    inside = list(_body_times(record))
    return bool(named) and all(t is not None and t < before for t in named + inside)


def check_record(store: StoreBlock, key: str, record: Any) -> Any:
    """The record read from `key`, without its signature, if a key of the store signed it there
    (or the store has no key, or the operator trusts it unsigned); else IntegrityError
    (KeyNotHeld for a key the store lacks) naming the record and what to do."""
    secrets = read_keys(store)
    if not secrets:
        return record
    if not isinstance(record, dict):
        raise IntegrityError(f"record {key} is not a JSON object: not a record of this project; delete it")
    record = dict(record)
    signature = record.pop(RECORD_FIELD, None)
    if signature is not None and not isinstance(signature, str):
        raise IntegrityError(f"record {key} has a malformed signature: forged or damaged; delete it")
    remedy = (
        f"check who wrote it and delete {key}; meanwhile listings leave it out and whatever asks "
        "for it by name is refused"
    )
    item = _Signed(
        where=f"record {key}",
        kind="records",
        salt=RECORD_SALT,
        body=_record_body(store, key, record),
        signature=signature,
        trusted_unsigned=signature is None and _trusted_unsigned_record(store, key, record),
        remedy=remedy,
        forged_remedy=remedy,
    )
    _check(store, secrets, item)
    return record
