"""A writer with access to the bucket but not to the store's encryption key forges backups: on a
store with a key every manifest is signed (tasks/storage/signing.py), and one that no key of the
store signed is refused by every reader (get_backup, restore, 'latest', the sweep, retention),
on the local store and on S3. Each restore that must be refused leaves the target untouched.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import SecretStr

from flows.maintenance import enforce_retention, verify_backups
from flows.restore import restore_component
from tasks.errors import IntegrityError
from tasks.models import Encryption
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup
from tasks.storage.health import Status, finding, health_of
from tasks.storage.layout import layout
from tasks.table import policy
from tests.faults.helpers import app_target, random_secret
from tests.faults.test_catalog_truth import APP, OLD_STATE, backup, failed_with, untouched


@pytest.fixture(params=["local", "s3"])
def keyed(request, tmp_path, prefect_server):
    """(store factory, a store with a key, app-state target, state file) on each backend: the
    factory makes blocks on the same directory or bucket (without a key: the intruder's view)."""
    make = request.getfixturevalue("local_store" if request.param == "local" else "s3_store")
    store = make(encryption_key=SecretStr(random_secret("key")))
    target = app_target(tmp_path / "steps", mib=1)
    state = tmp_path / "steps" / "sessions.restored"
    state.write_bytes(OLD_STATE)
    return make, store, target, state


@pytest.mark.fault(
    "catalog",
    "a backup forged by a writer without the key: plaintext objects, `encryption: none`, a "
    "recomputed checksum, no signature; newer than the real one, which is past its retention",
    "get_backup and the restore by id and of 'latest' fail 'is not signed' (target untouched); "
    "the sweep fails naming it and never records it verified; retention keeps the real one (the "
    "forged one is not good) and leaves the forged folder alone",
)
def test_a_forged_plaintext_backup_is_refused_by_every_reader(keyed):
    make, store, target, state = keyed
    real = backup(store, b"the real state", age=policy(APP).retention + timedelta(days=1))
    forged = backup(make(), b"the intruder's state")  # no key: what a writer of the bucket can make
    assert forged.objects[0].encryption == Encryption.none

    with pytest.raises(IntegrityError, match=f"manifest .*{forged.id}.* is not signed"):
        get_backup(store, forged.id)
    st = restore_component(APP, backup_id=forged.id, target=target, store=store, return_state=True)
    failed_with(st, "IntegrityError", "is not signed")
    st = restore_component(APP, target=target, store=store, return_state=True)  # 'latest'
    failed_with(st, "IntegrityError", forged.id)
    assert untouched(state)

    st = verify_backups(components=[APP], store=store, return_state=True)
    failed_with(st, "IntegrityError", forged.id)
    assert finding(store, forged.id) is None  # never 'verified' (nor damaged: see the next test)

    plan = enforce_retention(store=store, components=[APP])["components"][APP]
    assert real.id not in plan["would_delete"]  # still the last good backup
    assert plan["unreadable_left_alone"] == [layout(store).backup_dir(forged.id) + "/"]
    assert get_backup(store, real.id) == real


@pytest.mark.fault(
    "catalog",
    "backup B's objects copied into backup A's folder, A's manifest rewritten to name them with "
    "B's checksums and resealed, A's signature kept (or stripped)",
    "restore of A Failed with IntegrityError 'is not signed by any key of this store' (target "
    "untouched) and A is recorded damaged; with the signature stripped, refused too; B still reads",
)
def test_another_backups_objects_under_a_manifest_naming_a_are_refused(keyed):
    _make, store, target, state = keyed
    a = backup(store, b"state A")
    b = backup(store, b"state B")
    backend, keys = backend_for(store), layout(store)
    objects = []
    for obj in b.objects:
        key = keys.object_key(a.id, obj.name)
        backend.put_bytes(key, backend.get_bytes(obj.key))
        objects.append(obj.model_copy(update={"key": key, "version_id": None}))
    swapped = a.model_copy(update={"objects": objects}).sealed()  # A's signature still on it
    backend.put_bytes(keys.manifest_key(a.id), swapped.model_dump_json().encode())

    st = restore_component(APP, backup_id=a.id, target=target, store=store, return_state=True)
    failed_with(st, "IntegrityError", f"{a.id}")
    assert "is not signed by any key of this store" in st.message
    assert untouched(state)
    assert health_of(store, APP)[a.id].status == Status.damaged
    stripped = swapped.model_copy(update={"signature": None}).sealed()
    backend.put_bytes(keys.manifest_key(a.id), stripped.model_dump_json().encode())
    with pytest.raises(IntegrityError, match="is not signed"):
        get_backup(store, a.id)
    assert get_backup(store, b.id) == b


@pytest.mark.fault(
    "catalog",
    "a forged plaintext backup carrying a genuine signature copied from a real manifest",
    "refused 'is not signed by any key of this store' and recorded damaged: the sweep fails "
    "naming it, 'latest' fails rather than fall back to the real one silently",
)
def test_a_signature_copied_from_a_real_manifest_does_not_sign_a_forged_one(keyed):
    make, store, _target, _state = keyed
    real = backup(store, b"the real state", age=timedelta(minutes=1))
    forged = backup(make(), b"the intruder's state")
    pasted = forged.model_copy(update={"signature": real.signature}).sealed()
    backend_for(store).put_bytes(layout(store).manifest_key(forged.id), pasted.model_dump_json().encode())

    with pytest.raises(IntegrityError, match=f"{forged.id}.*is not signed by any key of this store"):
        get_backup(store, forged.id)
    st = verify_backups(components=[APP], store=store, return_state=True)
    failed_with(st, "IntegrityError", forged.id)
    assert finding(store, forged.id).status == Status.damaged
    with pytest.raises(IntegrityError, match=f"newest {APP} backup {forged.id} is damaged"):
        get_backup(store, "latest", APP)
