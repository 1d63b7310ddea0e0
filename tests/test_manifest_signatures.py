"""Signed manifests (tasks/storage/signing.py), beside the attacks of tests/faults/
test_forged_manifests.py: what an operator trusts from before the store had a key, key rotation,
the cached index, DR copies, and stores without a key (unchanged)."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr, ValidationError

from blocks.store import LocalStore
from sandbox.s3 import make_bucket
from sandbox.s3 import s3_store as make_s3_store
from tasks.errors import IntegrityError, KeyNotHeld
from tasks.models import Manifest
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup, latest_backup, list_backups
from tasks.storage.codec import key_id
from tasks.storage.health import finding
from tasks.storage.index import list_component
from tasks.storage.layout import layout
from tasks.storage.replicate import copy_difference, replicate_backup
from tasks.storage.session import backup_session, read_object

APP = "app-state"
KEY_A, KEY_B = "key-A-" + secrets.token_hex(8), "key-B-" + secrets.token_hex(8)


def take(store, data: bytes = b"state\n") -> Manifest:
    with backup_session(store, APP) as s:
        s.write("data", [data])
        s.commit()
    return s.manifest


def rewrite(store, manifest: Manifest, **update) -> Manifest:
    """What a writer of the bucket can do: any manifest, resealed (a checksum anyone computes)."""
    forged = manifest.model_copy(update=update).sealed()
    backend_for(store).put_bytes(layout(store).manifest_key(manifest.id), forged.model_dump_json().encode())
    return forged


def test_unsigned_backups_from_before_the_key_are_trusted_only_before_the_operators_time(local_store):
    """A backup written before the store had a key (or by a version that did not sign) is unsigned,
    as a forged one is: refused by default, naming the option; trusted once the store block's
    unsigned_manifests_before is after its id time and its times, never if it is before them."""
    old = take(local_store(), b"from before the key\n")
    cutoff = datetime.now(UTC)
    keyed = local_store(encryption_key=SecretStr(KEY_A))
    with pytest.raises(IntegrityError, match=f"{old.id}.*is not signed.*unsigned_manifests_before"):
        get_backup(keyed, old.id)
    with pytest.raises(IntegrityError, match="is not signed"):
        latest_backup(keyed, APP)  # never a silent fall-back past it
    assert finding(keyed, old.id) is None  # unsigned is not proof of damage: not recorded

    trusting = local_store(encryption_key=SecretStr(KEY_A), unsigned_manifests_before=cutoff)
    assert get_backup(trusting, old.id) == old
    assert b"".join(read_object(trusting, old.objects[0])) == b"from before the key\n"
    new = take(trusting)
    assert new.signature and [m.id for m in list_backups(trusting, APP)] == [old.id, new.id]

    early = local_store(encryption_key=SecretStr(KEY_A), unsigned_manifests_before=old.started_at)
    with pytest.raises(IntegrityError, match="is not signed"):
        get_backup(early, old.id)
    # an old id with a time after the cutoff (an intruder's manifest dressed as an old one)
    rewrite(trusting, old, finished_at=cutoff + timedelta(seconds=1))
    with pytest.raises(IntegrityError, match="is not signed"):
        get_backup(trusting, old.id)
    # the option trusts the unsigned only: a signed manifest that no key signed stays refused
    rewrite(trusting, new, labels={**new.labels, "kind": "scheduled"}, started_at=cutoff - timedelta(days=1))
    with pytest.raises(IntegrityError, match="is not signed by any key of this store"):
        get_backup(trusting, new.id)


def test_the_trust_option_needs_a_time_zone():
    with pytest.raises(ValidationError, match="timezone"):
        LocalStore(path="/tmp/x", unsigned_manifests_before=datetime(2026, 1, 1))  # noqa: DTZ001


def test_rotation_old_manifests_read_while_their_key_is_held_new_ones_are_signed_with_the_new_key(
    local_store,
):
    store_a = local_store(encryption_key=SecretStr(KEY_A))
    old = take(store_a)
    assert old.signature.startswith(key_id(KEY_A) + ":")
    rotated = local_store(encryption_key=SecretStr(KEY_B), previous_encryption_keys=[SecretStr(KEY_A)])
    assert get_backup(rotated, old.id) == old
    new = take(rotated)
    assert new.signature.startswith(key_id(KEY_B) + ":")
    assert [m.id for m in list_backups(rotated, APP)] == [old.id, new.id]

    # the old key dropped too early: said by key id, and not recorded as damage (a key missing
    # explains it as well as forgery does)
    only_b = local_store(encryption_key=SecretStr(KEY_B))
    with pytest.raises(KeyNotHeld, match=f"signed with key {key_id(KEY_A)}.*holds {key_id(KEY_B)}"):
        get_backup(only_b, old.id)
    assert finding(only_b, old.id) is None
    assert get_backup(only_b, new.id) == new


def test_the_cached_index_is_checked_as_the_manifest_itself(s3_store):
    """The index (v2) caches manifest bodies: a body cached while the operator trusted unsigned
    manifests is refused from the cache once that trust is withdrawn, as the manifest is."""
    old = take(s3_store(), b"unsigned\n")
    trusting = s3_store(encryption_key=SecretStr(KEY_A), unsigned_manifests_before=datetime.now(UTC))
    new = take(trusting)
    assert [m.id for m in list_component(trusting, APP).manifests] == [old.id, new.id]
    cached = list_component(trusting, APP)
    assert cached.fetched == 0  # both from the index

    strict = s3_store(encryption_key=SecretStr(KEY_A))
    listing = list_component(strict, APP)
    assert [m.id for m in listing.manifests] == [new.id]
    assert "is not signed" in listing.unreadable[layout(strict).manifest_key(old.id)]


def test_a_dr_copy_is_signed_by_the_dr_store_and_is_the_primarys_backup(s3_store, moto):
    rotated = s3_store(encryption_key=SecretStr(KEY_B), previous_encryption_keys=[SecretStr(KEY_A)])
    old = take(s3_store(encryption_key=SecretStr(KEY_A)))  # signed with the older key
    name, _ = make_bucket(moto.url, "klb-dr-" + secrets.token_hex(5))
    both = {"encryption_key": SecretStr(KEY_B), "previous_encryption_keys": [SecretStr(KEY_A)]}
    dr = make_s3_store(moto.url, name, prefix="dr", **both)
    replicate_backup(old, rotated, dr)
    copy = get_backup(dr, old.id)
    assert copy.signature.startswith(key_id(KEY_B) + ":")  # its keys are the DR store's: signed anew
    assert copy_difference(old, copy) is None
    assert replicate_backup(old, rotated, dr).copied == 0  # a re-run: the same manifest, not rewritten


def test_a_store_without_a_key_is_unchanged(local_store):
    """No key, no signature: the manifest is stored as before (no `signature` field), and a
    rewritten one is read as before (write access to an unkeyed store is trust: docs/operations.md)."""
    store = local_store()
    m = take(store)
    assert m.signature is None
    assert "signature" not in json.loads(backend_for(store).get_bytes(layout(store).manifest_key(m.id)))
    rewritten = rewrite(store, m, labels={**m.labels, "note": "rewritten"})
    assert get_backup(store, m.id) == rewritten
