"""Full cluster restore (runbook "Scenario 1"): the steps of one run, each recorded in the store
so that a run can be resumed, in the registry's restore order. The flow
(flows/scenarios.py:full_cluster_restore) holds each component's lock around its step."""

from __future__ import annotations

import contextlib
from typing import Any

from prefect.blocks.core import Block

from blocks.store import StoreBlock
from tasks.components.registry import load, load_target
from tasks.errors import ComponentFailed, NotFound
from tasks.models import Manifest
from tasks.operations.plan import PLAN_ONLY
from tasks.storage.layout import layout
from tasks.storage.records import get_record
from tasks.verbs import restore_options, restore_task, verify_task


def run_key(store: StoreBlock, run_id: str) -> str:
    return layout(store).dr_run_key(run_id)


def step_key(store: StoreBlock, run_id: str, index: int, step: str) -> str:
    return layout(store).dr_step_key(run_id, index, step)


def read_step(store: StoreBlock, key: str) -> dict | None:
    try:
        return get_record(store, key)
    except NotFound:
        return None


def etcd_plan(manifest: Manifest) -> dict[str, Any]:
    """etcd comes back by rebuilding members from the snapshot: the commands, not an action."""
    snap = manifest.objects[0]
    return {
        "snapshot_backup": manifest.id,
        "object": snap.key,
        "raw_sha256": snap.raw_sha256,
        "steps": [
            f"download and check: restore_component('etcd', '{manifest.id}') or read_object -> snapshot.db",
            "ETCDCTL_API=3 etcdctl snapshot status snapshot.db -w json  # revision, hash",
            "ETCDCTL_API=3 etcdctl snapshot restore snapshot.db --data-dir <new dir> "
            "--name <member> --initial-cluster <...> --initial-advertise-peer-urls <...>",
            "start each member on its new data dir, then check `etcdctl endpoint health`",
        ],
    }


def verify_restored(
    done: dict[str, dict], manifests: dict[str, Manifest], targets: dict[str, str | Block]
) -> dict[str, Any]:
    """Each restored component as it is now; where both sides have a fingerprint, they must match."""
    out: dict[str, Any] = {}
    mismatched = []
    for name, rec in done.items():
        if rec.get("status") != "done" or not rec.get("restored"):
            continue
        state = load(name).describe_current_state(load_target(name, targets.get(name)))
        expected = manifests[name].fingerprint
        match = None if expected is None or "fingerprint" not in state else state["fingerprint"] == expected
        out[name] = {"state": state, "fingerprint_matches": match}
        if match is False:
            mismatched.append(name)
    if mismatched:
        raise ComponentFailed(f"after the restore, {mismatched} do not match their backups' fingerprints")
    return out


def run_step(
    component: str | None,
    plan_action: str,
    manifests: dict[str, Manifest],
    targets: dict[str, str | Block],
    store: StoreBlock,
    options: dict[str, Any] | None,
    done: dict[str, dict],
) -> dict[str, Any]:
    if component is None:
        return {"status": "done", "verified": verify_restored(done, manifests, targets)}
    manifest = manifests.get(component)
    if manifest is None or plan_action == "skip":
        return {"status": "skipped", "reason": "nothing to restore or not configured (see the plan)"}
    if component in PLAN_ONLY:
        return {"status": "done", "restored": False, "plan": etcd_plan(manifest)}
    target = load_target(component, targets.get(component))
    verify_task(manifest, store, target)
    if component == "volumes":
        report = restore_volumes(manifest, target, store, options)
    else:
        report = restore_task(manifest, target, store, options)
    return {"status": "done", "restored": True, "backup_id": manifest.id, "report": report}


def restore_volumes(
    manifest: Manifest, target: Any, store: StoreBlock, options: dict[str, Any] | None
) -> dict[str, Any]:
    """The volumes step: the data of the chosen volumes backup in every claim it holds. The
    kubernetes step before it restored the claims already, with the data of the kubernetes
    backup's own snapshots (or pod volume backups), or empty when it has none, and Velero skips
    a claim that exists: the volumes backup's data never got in. So, as data_corruption does,
    the apps using them are quiesced, those claims deleted and restored with their data."""
    from tasks.components.kubernetes import api as kube
    from tasks.components.kubernetes.backups import _kinds, load_document
    from tasks.components.kubernetes.quiesce import quiesced
    from tasks.components.kubernetes.restores import _present
    from tasks.operations.disaster import delete_pvcs_task, refuse_retained_volumes

    opts = restore_options("volumes", options)
    doc = load_document(store, manifest)
    if (
        opts.restore_pvs is False
        or opts.names
        or opts.label_selector
        or "persistentvolumeclaims" not in _kinds(opts.resources or [], opts.exclude_resources)
    ):
        return restore_task(manifest, target, store, options)  # no claim with its data: nothing to replace
    k = kube.connect(target.kube)
    existing: dict[str, list[str]] = {}
    for ns in opts.namespaces or sorted(doc["inventory"]):
        if ns in opts.exclude_namespaces:
            continue
        into = opts.namespace_mapping.get(ns, ns)
        held = doc["inventory"].get(ns, {}).get("persistentvolumeclaims", [])
        there = sorted(set(held) & _present(k, into, "persistentvolumeclaims"))
        if there:
            refuse_retained_volumes(target, doc, into, there)  # before any is deleted
            existing[into] = there
    with contextlib.ExitStack() as stack:
        for ns in existing:
            stack.enter_context(quiesced(target.kube, ns))
        for ns, names in existing.items():
            delete_pvcs_task(target, ns, names)
        report = restore_task(manifest, target, store, options)
    if existing:
        report["replaced_claims"] = [f"{ns}/{name}" for ns, names in existing.items() for name in names]
    return report
