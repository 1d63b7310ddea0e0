"""A backup whose only good copy is in the DR store (the primary's copy damaged, or gone while
still within its retention) is said by the integrity sweep, with how to restore it from there;
on moto (two buckets, two credentials)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from sandbox.s3 import make_bucket, s3_store
from tasks.errors import IntegrityError
from tasks.ids import new_backup_id
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup, list_backups, verify_backup
from tasks.storage.replicate import replicate_backup
from tasks.storage.session import backup_session, read_object
from tasks.table import policy

APP = "app-state"


@pytest.fixture
def dr(moto):
    who = {"key_id": "dr-key", "secret": "dr-secret", "region": "us-east-1"}
    name, _ = make_bucket(moto.url, "klb-dronly-" + secrets.token_hex(5), **who)
    return s3_store(moto.url, name, prefix="dr/backups", **who)


def backup(store, data: bytes, age: timedelta = timedelta(0)):
    with backup_session(store, APP) as s:
        if age:
            started = datetime.now(UTC) - age
            s.started_at, s.id, s.source_time = started, new_backup_id(APP, started), started
        s.write("data", [data])
        return s.commit()


def flip(store, key: str) -> None:
    backend = backend_for(store)
    data = bytearray(backend.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    backend.put_bytes(key, bytes(data))


def test_a_backup_only_the_dr_store_holds_good_fails_the_sweep_saying_so(prefect_server, s3_store, dr):
    from flows.maintenance import verify_backups

    primary = s3_store()
    damaged = backup(primary, b"damaged in the primary " * 40, timedelta(hours=2))
    lost = backup(primary, b"lost from the primary " * 40, timedelta(hours=1))
    for m in (damaged, lost):
        replicate_backup(m, primary, dr)
    flip(primary, damaged.objects[0].key)
    with pytest.raises(IntegrityError):  # a restore's read finds it: the primary records the damage
        verify_backup(primary, damaged)
    backend_for(primary).delete_keys(
        list(backend_for(primary).list_keys(lost.objects[0].key.rsplit("/", 1)[0]))
    )
    assert [m.id for m in list_backups(primary, APP)] == [damaged.id]

    with pytest.raises(IntegrityError, match="failed verification") as err:
        verify_backups(components=[APP], store=primary, dr_store=dr, newest=2)
    assert f"dr-only:{damaged.id}" in str(err.value) and f"dr-only:{lost.id}" in str(err.value)
    assert f"dr:{lost.id}" not in str(err.value).replace("dr-only:", "")  # the DR copies are good
    # and the DR copy is what a restore can use, by id, with store=<the DR block>
    assert b"".join(read_object(dr, get_backup(dr, lost.id).objects[0])) == b"lost from the primary " * 40


def test_what_counts_as_only_in_the_dr_store(dr):
    """Unit rule: the primary's damage counts whatever the age; a backup the primary lacks counts
    only within its retention (older ones the primary's retention may have deleted first)."""
    from tasks.storage.replicate import dr_only_problems

    keep = policy(APP).retention
    old = backup(dr, b"old", keep + timedelta(days=2))
    recent = backup(dr, b"recent", timedelta(hours=1))
    both = backup(dr, b"both", timedelta(minutes=30))
    found = dr_only_problems({both.id}, {old.id: "sha256 mismatch"}, [old, recent, both], {recent.id})
    assert set(found) == {old.id, recent.id}
    assert "the primary's copy is damaged (sha256 mismatch)" in found[old.id]
    assert "does not hold it" in found[recent.id] and "read whole and checks out" in found[recent.id]
    assert f"backup_id='{recent.id}', store=<the DR store block>" in found[recent.id]
    assert dr_only_problems({both.id}, {}, [old, recent, both], set()).keys() == {recent.id}
