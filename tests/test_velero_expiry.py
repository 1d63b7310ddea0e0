"""Velero's TTL against our retention: Velero garbage-collects a Backup at its status.expiration
whatever our catalog keeps, so retention tells Velero to keep the backups it keeps past their
window (the newest good one above all). The emulated Velero collects expired backups as its GC
controller does, and its Backup CRD has no status subresource, as the real one."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from flows.backup import backup_component
from flows.maintenance import enforce_retention
from sandbox.k8s_emulator.store import BY_PATH
from tasks.errors import ComponentFailed
from tasks.storage.catalog import get_backup
from tasks.table import policy
from tests.k8s_helpers import seed_namespaces

BACKUPS = BY_PATH[("velero.io/v1", "backups")]


@pytest.fixture
def target(kube_api, ctl):
    return kube_api.velero_target(include_namespaces=list(seed_namespaces(ctl, "ttl")))


def expiration(kube_api, name: str) -> datetime | None:
    obj = kube_api.server.store.find(BACKUPS, "velero", name)
    return None if obj is None else datetime.fromisoformat(obj["status"]["expiration"].replace("Z", "+00:00"))


def expire_soon(kube_api, name: str, seconds: float) -> None:
    """As if the backup's TTL were nearly up (the Velero server writes status this way)."""
    when = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube_api.server.store.patch(BACKUPS, "velero", name, {"status": {"expiration": when}}, status=True)


def wait_gone(kube_api, name: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if kube_api.server.store.find(BACKUPS, "velero", name) is None:
            return True
        time.sleep(0.1)
    return False


def test_retention_keeps_the_newest_good_backup_alive_in_velero(
    prefect_server, kube_api, target, local_store
):
    store = local_store()
    older = backup_component("kubernetes", target=target, store=store)
    newest = backup_component("kubernetes", target=target, store=store)
    old_name, new_name = (get_backup(store, r.id).engine["velero_backup"] for r in (older, newest))
    # both nearly expired, but not before the two runs below have finished on a slow machine
    # (a 3 s margin let Velero's GC take the newest one before the hold, on a loaded CI worker)
    for name in (old_name, new_name):
        expire_soon(kube_api, name, 120)
    before = {name: expiration(kube_api, name) for name in (old_name, new_name)}

    dry = enforce_retention(
        dry_run=True, store=store, components=["kubernetes"], targets={"kubernetes": target}
    )
    assert "would keep in Velero" in dry["components"]["kubernetes"]["engine_hold"][newest.id]
    assert expiration(kube_api, new_name) == before[new_name]  # a dry run changes nothing

    done = enforce_retention(
        dry_run=False, store=store, components=["kubernetes"], targets={"kubernetes": target}
    )
    assert list(done["components"]["kubernetes"]["engine_hold"]) == [newest.id]
    retention = policy("kubernetes").retention
    assert expiration(kube_api, new_name) >= datetime.now(UTC) + retention - timedelta(minutes=1)
    assert expiration(kube_api, old_name) == before[old_name]  # not protected: left to Velero

    # Velero's GC takes the one retention does not protect (within its window, not the newest)
    # once its TTL is up, and leaves the one it was told to keep
    expire_soon(kube_api, old_name, -1)
    assert wait_gone(kube_api, old_name), "the emulated Velero did not collect an expired backup"
    assert kube_api.server.store.find(BACKUPS, "velero", new_name) is not None


def test_a_hold_that_cannot_be_placed_fails_the_run_saying_what_to_fix(
    prefect_server, kube_api, target, local_store, monkeypatch
):
    store = local_store()
    backup_component("kubernetes", target=target, store=store)
    monkeypatch.delenv("KLB_VELERO_TARGET", raising=False)
    with pytest.raises(
        ComponentFailed, match=r"Velero would expire backups retention keeps.*KLB_VELERO_TARGET"
    ):
        enforce_retention(dry_run=False, store=store, components=["kubernetes"])

    kube_api.controller.deny("patch", "backups")
    with pytest.raises(ComponentFailed, match="forbidden"):
        enforce_retention(
            dry_run=False, store=store, components=["kubernetes"], targets={"kubernetes": target}
        )


def test_velero_backups_have_no_status_subresource_as_their_crd(kube_api, target):
    from tasks.components.kubernetes.api import connect

    k = connect(target.kube)
    body = {
        "apiVersion": "velero.io/v1",
        "kind": "Backup",
        "metadata": {"name": "edited"},
        "spec": {"includedNamespaces": ["x"]},
    }
    k.custom.create_namespaced_custom_object("velero.io", "v1", "velero", "backups", body)
    # the controller sets its own expiration when it takes the backup: edited only after that
    # (on a loaded machine it took it after the edit, and overwrote it)
    from sandbox.services import wait_until

    wait_until(
        lambda: (kube_api.server.store.find(BACKUPS, "velero", "edited").get("status") or {}).get(
            "expiration"
        ),
        60,
        "the emulated Velero to take the backup",
    )
    until = "2099-01-01T00:00:00Z"
    # what `kubectl edit backup` does: status changes through the object itself
    k.custom.patch_namespaced_custom_object(
        "velero.io", "v1", "velero", "backups", "edited", {"status": {"expiration": until}}
    )
    assert kube_api.server.store.find(BACKUPS, "velero", "edited")["status"]["expiration"] == until
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as missing:
        k.custom.patch_namespaced_custom_object_status(
            "velero.io", "v1", "velero", "backups", "edited", {"status": {"phase": "Completed"}}
        )
    assert missing.value.status == 404
