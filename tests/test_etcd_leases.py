"""Leased keys in an etcd snapshot: a lease that runs out after the restored member started deletes
its keys (and moves the member's revision on) before the check counts them. The check must still
pass for that, and still fail for anything else that changed, against a real etcd 3.4."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from blocks.etcd import EtcdTarget
from tasks.components import etcd as etcd_component
from tasks.components.etcd import member, swap
from tasks.errors import ComponentFailed, IntegrityError
from tasks.verbs import backup_task


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def post(url: str, path: str, body: dict) -> dict:
    resp = httpx.post(f"{url}{path}", json=body, timeout=10)
    resp.raise_for_status()
    return resp.json()


@pytest.fixture
def leased_backup(etcd, local_store):
    """A backup of the session's etcd holding 3 keys under a lease (long enough to outlive the
    backup; the test ends it on the restored member, as its running out would) and 5 without."""
    prefix = f"/klb-lease/{os.urandom(4).hex()}/"
    lease = post(etcd.url, "/v3/lease/grant", {"TTL": 300})["ID"]
    for i in range(3):
        post(etcd.url, "/v3/kv/put", {"key": b64(f"{prefix}leased-{i}"), "value": b64("v"), "lease": lease})
    for i in range(5):
        post(etcd.url, "/v3/kv/put", {"key": b64(f"{prefix}plain-{i}"), "value": b64("v")})
    store = local_store()
    target = EtcdTarget(endpoints=[etcd.url])
    try:
        yield target, store, backup_task.fn("etcd", target, store), prefix, lease
    finally:
        post(etcd.url, "/v3/lease/revoke", {"ID": lease})


def expire_on_restored_member(monkeypatch, lease: str, also=None) -> None:
    """The throwaway member, once healthy, loses the lease (what its TTL running out does: the
    lessor revokes it and deletes its keys in one revision) before the check reads it; `also`
    then does something else to the member."""
    real = member.throwaway_member

    @contextmanager
    def member_whose_lease_ran_out(*args, **kwargs) -> Iterator[str]:
        with real(*args, **kwargs) as url:
            post(url, "/v3/lease/revoke", {"ID": lease})
            if also:
                also(url)
            yield url

    monkeypatch.setattr(member, "throwaway_member", member_whose_lease_ran_out)


def test_a_lease_that_runs_out_in_the_restored_member_does_not_fail_the_check(leased_backup, monkeypatch):
    """The keys are counted at the snapshot's revision, and the revisions after it hold only the
    deletion of leased keys: verified, with the expired keys named in the report."""
    target, store, manifest, _, lease = leased_backup
    expire_on_restored_member(monkeypatch, lease)
    checks = etcd_component.drill(target, manifest, store, "lease1")["checks"]
    want = manifest.engine["snapshot_status"]["revision"]
    keys = manifest.engine["keys"]
    assert checks["keys"] == {"expected": keys, "found": keys, "ok": True}
    assert checks["revision"]["ok"] is True and checks["revision"]["found"] == want + 1
    assert checks["revision"]["leased_keys_expired_since"] == 3


def test_a_short_lease_that_really_runs_out_on_the_restored_member(etcd, local_store, monkeypatch):
    """The same with a lease left to run out: 8 s, enough for the backup to take it; the restored
    member starts it again and deletes its key when it ends, and the check runs after that."""
    prefix = f"/klb-lease/{os.urandom(4).hex()}/"
    lease = post(etcd.url, "/v3/lease/grant", {"TTL": 8})["ID"]
    post(etcd.url, "/v3/kv/put", {"key": b64(f"{prefix}short"), "value": b64("v"), "lease": lease})
    post(etcd.url, "/v3/kv/put", {"key": b64(f"{prefix}plain"), "value": b64("v")})
    store, target = local_store(), EtcdTarget(endpoints=[etcd.url])
    manifest = backup_task.fn("etcd", target, store)
    at_snapshot = {"key": b64(prefix), "range_end": b64(prefix[:-1] + "0"), "count_only": True,
                   "revision": manifest.engine["snapshot_status"]["revision"]}  # fmt: skip
    assert post(etcd.url, "/v3/kv/range", at_snapshot)["count"] == "2", "the snapshot holds the leased key"
    real = member.throwaway_member

    @contextmanager
    def once_the_lease_ran_out(*args, **kwargs) -> Iterator[str]:
        with real(*args, **kwargs) as url:
            deadline = time.monotonic() + 60
            while post(url, "/v3/kv/range", {"key": b64(f"{prefix}short")}).get("kvs"):
                assert time.monotonic() < deadline, "the restored member never ended the 8 s lease"
                time.sleep(0.2)
            yield url

    monkeypatch.setattr(member, "throwaway_member", once_the_lease_ran_out)
    checks = etcd_component.drill(target, manifest, store, "lease3")["checks"]
    assert checks["keys"]["ok"] and checks["revision"]["ok"]
    assert checks["revision"]["leased_keys_expired_since"] == 1


@pytest.mark.parametrize("change", ["put", "delete"])
def test_anything_but_expired_leases_still_fails_the_check(leased_backup, monkeypatch, change):
    """Not weaker than before: a key written, or an unleased key deleted, after the snapshot's
    revision (next to an expired lease) is a difference."""
    target, store, manifest, prefix, lease = leased_backup
    if change == "put":

        def other(url: str) -> None:
            post(url, "/v3/kv/put", {"key": b64(f"{prefix}new"), "value": b64("v")})
    else:

        def other(url: str) -> None:
            post(url, "/v3/kv/deleterange", {"key": b64(f"{prefix}plain-0")})

    expire_on_restored_member(monkeypatch, lease, other)
    what = f"written '{prefix}new'" if change == "put" else f"deleted without a lease '{prefix}plain-0'"
    with pytest.raises(IntegrityError, match=what):
        etcd_component.drill(target, manifest, store, "lease2")


def test_the_swaps_check_allows_expired_leases_and_nothing_else(leased_backup, tmp_path: Path):
    """The same check runs after an approved swap, before kube-apiserver starts: etcd restarted
    on the restored data may have let short leases (kube-apiserver's master leases: 15 s) run out."""
    target, store, manifest, prefix, lease = leased_backup
    tl = etcd_component.tools(target)
    expect = {"revision": manifest.engine["snapshot_status"]["revision"], "keys": manifest.engine["keys"]}
    with etcd_component.private_dir(None, "lease-swap") as tmp:
        snap = etcd_component._download(store, manifest, tmp)
        with etcd_component.throwaway_member(tl, snap, tmp, "klb-lease-token") as url:
            post(url, "/v3/lease/revoke", {"ID": lease})
            restored = EtcdTarget(endpoints=[url])
            swap._check_restored(expect, restored, tl, {"ETCDCTL_API": "3"})
            post(url, "/v3/kv/put", {"key": b64(f"{prefix}after"), "value": b64("v")})
            with pytest.raises(ComponentFailed, match=f"written.*{prefix}after"):
                swap._check_restored(expect, restored, tl, {"ETCDCTL_API": "3"})
