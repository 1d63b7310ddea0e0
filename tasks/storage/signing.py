"""Signed manifests: on a store with an encryption key, a backup is what a key of the store signed.

A manifest's checksum proves only that it was not altered by accident: anyone who can write to
the bucket can recompute it. So on a store with an `encryption_key` every manifest written
(a backup's commit, a DR copy) carries `signature` = '<key id>:<HMAC-SHA256 of its body>' (the
body: everything but the checksum and the signature, as the checksum covers it), under a key
derived from the store's current key by scrypt with a salt of its own (not the objects', not the
health records'). Without it a writer of the bucket who lacks the key could write plaintext
objects and a manifest saying `encryption: none`, or put backup B's objects under a manifest
naming backup A, and the catalog, restores and the sweep would take it for a backup.

Every read checks it (catalog.parse_manifest: get_backup, listings, 'latest', retention, the
sweep, the cached index, which holds manifest bodies and re-checks them). On a store with keys:
- a signature under a key the store holds that does not match: refused, and it proves damage
  (forged or altered after it was written): recorded against the backup (health.py);
- a signature under a key id the store does not hold: KeyNotHeld, not damage (the old key was
  dropped too early explains it as well as forgery does, as for objects);
- no signature: refused, not damage (a backup from before the store had a key, or from a
  version that did not sign, is unsigned too), unless the operator trusts unsigned manifests
  from before a time (the store block's `unsigned_manifests_before`): one whose id and times
  are all before it is accepted, with a warning. Those can be forged too, so only for as long
  as the backups from before that time matter (docs/operations.md).
Refusals that are not damage are raised by listings too ('latest' never silently passes over
a newer backup it cannot read). A store without a key signs nothing and checks nothing: write
access to it is trust (object lock is what resists a writer there: docs/operations.md).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from functools import lru_cache

from blocks.store import StoreBlock
from tasks.errors import IntegrityError, KeyNotHeld, ambiguous_key_error
from tasks.ids import parse_backup_id
from tasks.models import Manifest
from tasks.storage.codec import derive_key, key_id
from tasks.storage.keys import read_keys
from tasks.storage.layout import backup_dir_of

log = logging.getLogger(__name__)
MANIFEST_SALT = b"klb manifest signature v1"  # not the objects' salts, not the health records'
_warned: set[tuple[str, str]] = set()  # (store, backup id): an unsigned manifest trusted, said once


@lru_cache(maxsize=16)
def _signing_key(secret: str) -> bytes:
    return derive_key(secret, MANIFEST_SALT)


def _mac(manifest: Manifest, secret: str) -> str:
    return hmac.new(_signing_key(secret), manifest.body(), hashlib.sha256).hexdigest()


def signed(manifest: Manifest, store: StoreBlock) -> Manifest:
    """`manifest` sealed (its checksum) and, on a store with keys, signed with the current one."""
    secrets = read_keys(store)
    signature = f"{key_id(secrets[0])}:{_mac(manifest, secrets[0])}" if secrets else None
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
    where = f"manifest {key} (backup {manifest.id})"
    if manifest.signature is None:
        if _trusted_unsigned(store, manifest):
            if (store.location, manifest.id) not in _warned:
                _warned.add((store.location, manifest.id))
                log.warning(
                    "%s is not signed: accepted, as the store block trusts unsigned manifests from before %s",
                    where,
                    store.unsigned_manifests_before.isoformat(),
                )
            return
        raise ambiguous_key_error(
            f"{where} is not signed, and this store has an encryption key: forged by someone who can "
            "write to the store, or written before the store had a key or by a version that did not "
            "sign manifests. If you trust the backups written before a time, set the store block's "
            "unsigned_manifests_before to that time (docs/operations.md); else delete "
            f"{backup_dir_of(key)}/ (or restore its manifest from the DR store)"
        )
    signer, _, mac = manifest.signature.partition(":")
    held = [s for s in secrets if key_id(s) == signer]
    if not held:
        raise KeyNotHeld(
            f"{where} is not signed by any key of this store: it is signed with key {signer} and the "
            f"store holds {', '.join(key_id(s) for s in secrets)}: the encryption key is wrong (set the "
            "key it was written with, or add it to previous_encryption_keys), or it is forged (then "
            "delete its folder)"
        )
    if not any(hmac.compare_digest(mac, _mac(manifest, s)) for s in held):
        raise IntegrityError(
            f"{where} is not signed by any key of this store: its signature (key {signer}, which "
            "the store holds) does not match its content: forged, or altered after it was "
            "written; restore the backup from the DR store by id, or delete its folder"
        )
