"""What the catalog says about a backup's health must never be better than the truth: damage
found while a slow sweep reads is not overwritten by the sweep's 'verified' (storage/health.py).
On the local store, with the real sweep flow; the damage is real (a flipped byte, found by a
restore-like read)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import flows.maintenance as maintenance
from tasks.errors import IntegrityError
from tasks.models import Manifest
from tasks.storage.backends import backend_for
from tasks.storage.catalog import latest_backup, verify_backup
from tasks.storage.health import BackupHealth, Status, finding, health_of, mark_damaged, mark_verified
from tasks.storage.layout import layout
from tasks.storage.session import BackupSession

APP = "app-state"


def backup(store, payload: bytes = b"orders: 42\n" * 100) -> Manifest:
    session = BackupSession(store, APP)
    session.write("sessions", [payload])
    return session.commit()


def flip(store, manifest: Manifest) -> bytes:
    """Flip one stored byte of the backup's first object; returns the bytes it had."""
    backend = backend_for(store)
    key = manifest.objects[0].key
    before = backend.get_bytes(key)
    data = bytearray(before)
    data[len(data) // 2] ^= 0x01
    backend.put_bytes(key, bytes(data))
    return before


def test_damage_found_while_a_slow_sweep_reads_is_not_hidden_by_its_verified(
    local_store, prefect_server, monkeypatch
):
    """The sweep has read the backup whole (it was good then); before it records 'verified', the
    object rots and a restore's read finds it and records the damage. The sweep's verdict, from a
    read that began before the damage was recorded, must not hide it: the catalog says damaged,
    'latest' refuses it, and a sweep that reads again afterwards (and finds it damaged) agrees."""
    store = local_store()
    m = backup(store)
    real_verify = maintenance.verify_task

    def slow_verify(manifest, block, target=None):
        done = real_verify.fn(manifest, block, target)  # the sweep's read: whole and good
        flip(store, manifest)  # meanwhile: bit rot, found by a restore's read
        with pytest.raises(IntegrityError):
            verify_backup(store, manifest)
        assert finding(store, manifest.id).status == Status.damaged
        return done

    monkeypatch.setattr(maintenance, "verify_task", slow_verify)
    maintenance.verify_backups(components=[APP], store=store)  # its own read passed

    assert finding(store, m.id).status == Status.damaged
    assert health_of(store, APP)[m.id].status == Status.damaged
    with pytest.raises(IntegrityError, match=f"newest {APP} backup {m.id} is damaged"):
        latest_backup(store, APP)


def test_a_backup_repaired_and_reread_after_the_damage_is_verified_again(local_store, prefect_server):
    """Damage wins only over reads that began before it: repaired (e.g. from the DR copy) and
    swept again, the backup is verified again, as docs/operations.md promises."""
    store = local_store()
    m = backup(store)
    good = flip(store, m)
    with pytest.raises(IntegrityError, match=m.id):
        maintenance.verify_backups(components=[APP], store=store)
    assert finding(store, m.id).status == Status.damaged

    backend_for(store).put_bytes(m.objects[0].key, good)  # repaired
    maintenance.verify_backups(components=[APP], store=store)
    assert finding(store, m.id).status == Status.verified
    assert latest_backup(store, APP).id == m.id


def test_an_older_reads_verdict_never_outranks_damage_recorded_after_it_began(local_store):
    """The rule itself, on any writer: a verdict whose read began at or before the damage was
    recorded leaves the damage standing, whichever is written last; a newer verdict is not
    replaced by an older one."""
    store = local_store()
    m = backup(store)
    began = datetime.now(UTC)
    mark_damaged(store, m.id, "object sessions: sha256 mismatch (found by a restore)")
    mark_verified(store, m.id, began)
    assert finding(store, m.id).status == Status.damaged
    assert "found by a restore" in health_of(store, APP)[m.id].reason

    later = datetime.now(UTC)
    mark_verified(store, m.id, later)  # a read begun after the damage: repaired
    mark_verified(store, m.id, began)  # a slow older sweep finishing last changes nothing
    assert finding(store, m.id).status == Status.verified
    assert finding(store, m.id).since == later


def test_a_forged_verified_record_cannot_hide_damage_on_a_store_with_a_key(local_store):
    """Anyone who can write to the bucket could write 'verified' over a damaged backup. On a
    store with an encryption key the verdicts are signed with a key derived from it: a forged
    one (no signature, or a signature of other content) is ignored, the damage stands; the
    store's own verdicts, also after a key rotation, still count."""
    store = local_store(encryption_key="the-current-key-" + "k" * 16)
    m = backup(store)
    began = datetime.now(UTC)
    mark_damaged(store, m.id, "object sessions: sha256 mismatch")
    key = layout(store).verified_key(m.id)
    forged = BackupHealth(
        id=m.id,
        status=Status.verified,
        checked_at=datetime.now(UTC),
        read_from=datetime(2099, 1, 1, tzinfo=UTC),
    )
    backend_for(store).put_bytes(key, forged.model_dump_json().encode())
    assert finding(store, m.id).status == Status.damaged
    assert health_of(store, APP)[m.id].status == Status.damaged
    # a genuine signature of another record, pasted on: refused too
    genuine = mark_verified(store, m.id, began)
    assert genuine is not None and genuine.signature
    backend_for(store).put_bytes(
        key, forged.model_copy(update={"signature": genuine.signature}).model_dump_json().encode()
    )
    assert finding(store, m.id).status == Status.damaged

    repaired = datetime.now(UTC)
    assert mark_verified(store, m.id, repaired).signature  # the sweep's own verdict: signed, counts
    assert finding(store, m.id).status == Status.verified
    rotated = local_store(
        encryption_key="the-next-key-" + "n" * 16, previous_encryption_keys=["the-current-key-" + "k" * 16]
    )
    assert finding(rotated, m.id).status == Status.verified
    # what the sweep stores carries its signature (a store without a key has none to sign with)
    assert BackupHealth.model_validate_json(backend_for(store).get_bytes(key)).signature


def test_a_verified_backup_deleted_within_its_retention_fails_the_sweep(local_store, prefect_server):
    """The newest backup, verified by a sweep, is deleted outside retention (by hand, a sync tool,
    an attacker with write access): its folder is gone, the older one becomes 'latest'. The next
    sweep must not report every backup healthy: it names the one that vanished. A damaged one
    deleted by hand (what an operator does with a bad backup) is no finding."""
    store = local_store()
    older, newer = backup(store), backup(store)
    maintenance.verify_backups(components=[APP], store=store, newest=2)
    assert finding(store, newer.id).status == Status.verified
    backend = backend_for(store)
    folder = newer.objects[0].key.rsplit("/", 1)[0] + "/"
    backend.delete_keys(list(backend.list_keys(folder)))
    assert latest_backup(store, APP).id == older.id  # what a restore of 'latest' would now use
    st = maintenance.verify_backups(components=[APP], store=store, newest=2, return_state=True)
    assert st.is_failed() and newer.id in str(st.result(raise_on_failure=False))
    # a damaged backup removed by hand: expected, not reported
    bad = backup(store)
    mark_damaged(store, bad.id, "a flipped byte")
    folder = bad.objects[0].key.rsplit("/", 1)[0] + "/"
    backend.delete_keys(list(backend.list_keys(folder)))
    for key in layout(store).health_keys(newer.id):  # the vanished one, acknowledged
        backend.delete_keys([key])
    assert maintenance.verify_backups(components=[APP], store=store, newest=2)


def test_retention_never_collects_a_verified_backups_data_when_only_its_manifest_went(
    any_store, prefect_server
):
    """The newest backup, verified by a sweep, loses only its manifest (deleted by hand, or by
    someone with write access). Retention took its objects for an abandoned write and, after the
    orphan grace, deleted the data of the newest verified-good backup: restoring the manifest
    (from the DR store, a noncurrent version) no longer brought it back. On both stores."""
    from datetime import timedelta

    from tests.test_retention_flow import old_backup

    store = any_store()
    old_backup(store, APP, timedelta(days=60))
    newest = old_backup(store, APP, timedelta(days=50))
    maintenance.verify_backups(components=[APP], store=store)
    assert finding(store, newest.id).status == Status.verified
    backend = backend_for(store)
    backend.delete_keys([layout(store).manifest_key(newest.id)])

    result = maintenance.enforce_retention(dry_run=False, store=store, components=[APP])
    assert result["components"][APP]["orphans"] == []
    assert backend.get_bytes(newest.objects[0].key)  # the data is still there
    # once its health records are gone (deleted on purpose, as the sweep says): collected
    backend.delete_keys(layout(store).health_keys(newest.id))
    result = maintenance.enforce_retention(dry_run=False, store=store, components=[APP])
    assert result["components"][APP]["orphans"] == [layout(store).backup_dir(newest.id)]


def test_the_approval_form_never_offers_a_damaged_or_future_backup_as_the_newer_one(local_store):
    """A checklist restore's approval form says 'A newer backup exists: <id>; this restore does
    not use it' (tasks/operations/restore_checklist.py). It named the newest routine backup even
    when that one was known damaged or dated in the future (a skewed clock): the approver was sent
    to a backup 'latest' itself refuses. Now: the newest one 'latest' could pick, not damaged."""
    from datetime import timedelta

    from tasks.operations.restore_checklist import newer_backup
    from tests.test_retention_flow import old_backup

    store = local_store()
    older = old_backup(store, APP, timedelta(hours=3))
    middle = old_backup(store, APP, timedelta(hours=2))
    newest = old_backup(store, APP, timedelta(hours=1))
    old_backup(store, APP, -timedelta(days=2))  # from a clock two days ahead
    assert newer_backup(store, older).id == newest.id
    flip(store, newest)
    with pytest.raises(IntegrityError):
        verify_backup(store, newest)  # recorded damaged
    assert newer_backup(store, older).id == middle.id
    assert newer_backup(store, middle) is None


def test_the_sweep_fails_naming_an_older_backup_whose_object_was_deleted(any_store, prefect_server):
    """An object of an older backup deleted behind its manifest's back (by hand, a lifecycle rule,
    an attacker): the sweep re-reads only the newest, and passed, saying nothing, while the
    listing it made shows the object gone; `backup_at_or_before` and restores by id would pick
    that backup. Now the sweep fails naming it, and records it damaged. On both stores."""
    store = any_store()
    older, _newer = backup(store), backup(store)
    backend_for(store).delete_keys([older.objects[0].key])
    st = maintenance.verify_backups(components=[APP], store=store, newest=1, return_state=True)
    assert st.is_failed() and f"primary:{older.id}" in st.message and "sessions" in st.message, st.message
    assert finding(store, older.id).status == Status.damaged


def test_damage_found_after_a_verdict_from_a_clock_ahead_is_not_hidden_by_it(local_store):
    """The sweep ran on a worker whose clock is an hour ahead: its 'verified' says its read began
    an hour from now. Then a restore (a worker with the right time) finds the backup damaged: the
    damage, stamped earlier than that verdict, lost to it, and 'latest' and retention kept using
    the damaged backup. Damage recorded after a verdict now outranks it whatever the clocks say."""
    from datetime import timedelta

    store = local_store()
    m = backup(store)
    mark_verified(store, m.id, datetime.now(UTC) + timedelta(hours=1))  # the skewed sweep's verdict
    flip(store, m)
    with pytest.raises(IntegrityError):
        verify_backup(store, m)  # a restore's read: recorded damaged
    assert finding(store, m.id).status == Status.damaged
    assert health_of(store, APP)[m.id].status == Status.damaged
    with pytest.raises(IntegrityError, match=f"newest {APP} backup {m.id} is damaged"):
        latest_backup(store, APP)
