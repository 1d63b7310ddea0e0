"""Full cluster restore (runbook "Scenario 1"): the steps of one run, each recorded in the store
so that a run can be resumed, in the registry's restore order. The flow
(flows/scenarios.py:full_cluster_restore) holds each component's lock around its step, and reads
and writes the step's record under it (two resumes of one run never both run a step)."""

from __future__ import annotations

import contextlib
from typing import Any

from prefect.blocks.core import Block

from blocks.store import StoreBlock
from tasks.components.registry import load, load_target
from tasks.errors import BackupError, BadInput, ComponentFailed, ConfigurationError, NotFound
from tasks.models import Manifest
from tasks.operations.plan import DR_STEPS, PLAN_ONLY, RestorePlan, target_label
from tasks.operations.recovery import RecoveryPoint
from tasks.operations.restores import target_digest
from tasks.operations.written_records import Write, recorded_restore
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
    """Each restored component as it is now; where both sides have a fingerprint, they must match.
    One without a fingerprint on either side was not checked: it is `verified: False` with why,
    never counted as verified (not_verified() lists them)."""
    out: dict[str, Any] = {}
    mismatched = []
    for name, rec in done.items():
        if rec.get("status") != "done" or not rec.get("restored"):
            continue
        state = load(name).describe_current_state(load_target(name, targets.get(name)))
        expected = manifests[name].fingerprint
        if expected is None:
            match, why = None, f"backup {manifests[name].id} has no fingerprint to compare with"
        elif "fingerprint" not in state:
            match, why = None, f"the {name} target's current state has no fingerprint to compare"
        else:
            match, why = state["fingerprint"] == expected, None
        out[name] = {"state": state, "fingerprint_matches": match, "verified": bool(match)}
        if why:
            out[name]["not_verified"] = why
        if match is False:
            mismatched.append(name)
    if mismatched:
        raise ComponentFailed(f"after the restore, {mismatched} do not match their backups' fingerprints")
    return out


def not_verified(outcome: dict[str, Any]) -> dict[str, str]:
    """Component -> why the verify step could not check it (from verify_restored's outcome)."""
    return {n: v["not_verified"] for n, v in (outcome.get("verified") or {}).items() if v.get("not_verified")}


def left_out(rp: RecoveryPoint, outcomes: dict[str, dict], targets: dict[str, str | Block]) -> dict[str, str]:
    """Component -> why the run did not bring it back though the recovery point asks for it: the
    point holds its backup and its step was skipped, its target not configured; or the point
    lacks it (it failed when the point was taken). Skipped as already identical is back."""
    out: dict[str, str] = {}
    for _, name in DR_STEPS:
        if name is None:
            continue
        if name in rp.failed:
            out[name] = (
                f"failed in recovery point {rp.id} ({rp.failed[name][:200]}): restore it from another "
                "backup (restore_with_checklist)"
            )
        elif name in rp.members and (outcomes.get(name) or {}).get("status") == "skipped":
            try:
                load_target(name, targets.get(name))
            except ConfigurationError as exc:
                out[name] = f"its target is not configured ({exc}): configure it and resume"
    return out


def run_settings(targets: dict[str, str | Block], options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a run restores into and how, recorded with the run: a resume must restore, and verify,
    into the same targets with the same options (check_resume)."""
    recorded: dict[str, Any] = {}
    for _, name in DR_STEPS:
        if name is None:
            continue
        ref = targets.get(name)
        try:
            target = load_target(name, ref)
        except ConfigurationError:
            recorded[name] = None  # not configured: its step is skipped
            continue
        recorded[name] = {
            "ref": ref if isinstance(ref, str) else None,
            "label": target_label(target),
            "identity": target_digest(target),
        }
    return {"targets": recorded, "options": options}


def check_resume(
    run: dict[str, Any], targets: dict[str, str | Block], options: dict[str, dict[str, Any]]
) -> tuple[dict[str, str | Block], dict[str, dict[str, Any]], dict[str, Any] | None]:
    """The targets and options a resume of `run` uses: the recorded ones when none are given,
    else the given ones only if they are the same; BadInput naming what differs otherwise. A
    component that was not configured (its step skipped, nothing restored into it) may be now:
    the third value is then the run's settings with its target, to record before its step runs
    (None: unchanged). A run recorded before settings were kept resumes with what is given."""
    if "settings" not in run:
        return targets, options, None
    recorded = run["settings"]
    run_id = run.get("run_id")
    if options and options != recorded["options"]:
        raise BadInput(
            f"run {run_id} was started with options {recorded['options']}, not {options}: resume it "
            "with the same options (or none: the recorded ones are used), or start a new run"
        )
    if not targets:  # the recorded block names; a run given block objects needs them again
        targets = {n: r["ref"] for n, r in recorded["targets"].items() if r and r["ref"]}
    now = run_settings(targets, recorded["options"])["targets"]

    def label(entry: dict | None) -> str:
        return (entry or {}).get("label", "not configured")

    added = {n: now[n] for n, r in recorded["targets"].items() if r is None and now.get(n) is not None}
    differ = {
        n: f"{label(r)} then, {label(now.get(n))} now"
        for n, r in recorded["targets"].items()
        if n not in added and (r or {}).get("identity") != (now.get(n) or {}).get("identity")
    }
    if differ:
        raise BadInput(
            f"run {run_id} restored into other targets than these: "
            + "; ".join(f"{n}: {d}" for n, d in differ.items())
            + ". Resume it with the targets it started with (their block names, or the same block "
            "objects), or start a new run; nothing was changed"
        )
    settings = {**recorded, "targets": {**recorded["targets"], **added}} if added else None
    return targets, recorded["options"], settings


def verify_pending(
    store: StoreBlock,
    run_id: str | None,
    rp_id: str,
    plan: RestorePlan,
    manifests: dict[str, Manifest],
    targets: dict[str, str | Block],
) -> set[str]:
    """Before any step changes anything: every backup a step still to run would restore is
    verified (checksums, then the component's own check). One that does not verify fails the run
    here, changing nothing (checked step by step, the steps before it had restored the point's
    other components, a run no resume can finish). -> the components verified."""
    checked: set[str] = set()
    for index, (step, component) in enumerate(DR_STEPS, start=1):
        manifest = manifests.get(component) if component else None
        if manifest is None or component in PLAN_ONLY or plan.step(component).action == "skip":
            continue
        previous = read_step(store, step_key(store, run_id, index, step)) if run_id else None
        if previous and previous.get("status") == "done":
            continue
        try:
            target = load_target(component, targets.get(component))
        except ConfigurationError:
            continue  # its step is skipped
        try:
            verify_task(manifest, store, target)
        except BackupError as exc:
            raise ComponentFailed(
                f"full cluster restore from {rp_id}: its {component} backup {manifest.id} does not "
                f"verify ({exc}). Nothing was changed: restore from another recovery point "
                "(list_recovery_points), or restore the components one by one"
            ) from exc
        checked.add(component)
    return checked


def run_step(
    component: str | None,
    plan_action: str,
    manifests: dict[str, Manifest],
    targets: dict[str, str | Block],
    store: StoreBlock,
    options: dict[str, Any] | None,
    done: dict[str, dict],
    verified: bool = False,
) -> dict[str, Any]:
    if component is None:
        return {"status": "done", "verified": verify_restored(done, manifests, targets)}
    manifest = manifests.get(component)
    if manifest is None or plan_action == "skip":
        return {"status": "skipped", "reason": "nothing to restore or not configured (see the plan)"}
    if component in PLAN_ONLY:
        return {"status": "done", "restored": False, "plan": etcd_plan(manifest)}
    target = load_target(component, targets.get(component))
    if not verified:  # verify_pending read it before the run changed anything
        verify_task(manifest, store, target)
    # its restore record: a rollback of an earlier checklist restore into this target sees it
    with recorded_restore(store, "full-cluster-restore", manifest, target, options) as write:
        if component == "volumes":
            report = write.report = restore_volumes(manifest, target, store, options, write)
        else:
            report = write.report = restore_task(manifest, target, store, options)
    return {
        "status": "done",
        "restored": True,
        "backup_id": manifest.id,
        "report": report,
        "restore_id": write.id,
    }


def restore_volumes(
    manifest: Manifest,
    target: Any,
    store: StoreBlock,
    options: dict[str, Any] | None,
    write: Write,
) -> dict[str, Any]:
    """The volumes step: the data of the chosen volumes backup in every claim it holds. The
    kubernetes step before it restored the claims already, with the data of the kubernetes
    backup's own snapshots (or pod volume backups), or empty when it has none, and Velero skips
    a claim that exists: the volumes backup's data never got in. So, as data_corruption does,
    the apps using them are quiesced, those claims deleted and restored with their data."""
    from tasks.components.kubernetes import api as kube
    from tasks.components.kubernetes.backups import _kinds, load_document
    from tasks.components.kubernetes.quiesce import QUIESCED_ANNOTATION, quiesced
    from tasks.components.kubernetes.restores import _plan, _present
    from tasks.operations.disaster import (
        delete_pvcs_task,
        refuse_retained_volumes,
        refuse_running_writers,
        refuse_unpermitted,
    )

    opts = restore_options("volumes", options)
    doc = load_document(store, manifest)
    _plan(doc, opts)  # what the restore would refuse, before any claim is deleted
    if (
        opts.restore_pvs is False
        or opts.names
        or opts.label_selector
        or "persistentvolumeclaims" not in _kinds(opts.resources or [], opts.exclude_resources)
    ):
        return restore_task(manifest, target, store, options)  # no claim with its data: nothing to replace
    k = kube.connect(target.kube)
    existing: dict[str, list[str]] = {}
    left_quiesced = []  # by an interrupted run (a killed step): their apps are put back here too
    for ns in opts.namespaces or sorted(doc["inventory"]):
        if ns in opts.exclude_namespaces:
            continue
        into = opts.namespace_mapping.get(ns, ns)
        held = doc["inventory"].get(ns, {}).get("persistentvolumeclaims", [])
        there = sorted(set(held) & _present(k, into, "persistentvolumeclaims"))
        if there:
            refuse_retained_volumes(target, doc, into, there)  # before any is deleted
            refuse_running_writers(target, into, there)
            refuse_unpermitted(target, into, there)
            existing[into] = there
        elif any(
            QUIESCED_ANNOTATION in (d.metadata.annotations or {}) for d in kube.list_deployments(k, into)
        ):
            left_quiesced.append(into)
    if existing and any(p.get("phase") == "Completed" for p in doc["describe"].get("fs_backups") or []):
        # the restore's own check comes after the claims are deleted: the helper pods it brings
        # (volumes.restore) must be removable before any claim goes
        from tasks.components.kubernetes.claims import check_helpers_removable

        check_helpers_removable(k, list(existing))
    with contextlib.ExitStack() as stack:
        for ns in [*existing, *left_quiesced]:  # each one's recorded replica counts put back at the end
            stack.enter_context(quiesced(target.kube, ns))
        for ns, names in existing.items():
            delete_pvcs_task(target, ns, names)
            write.changed = True  # the claims are gone: its record says changed, whatever follows
        report = restore_task(manifest, target, store, options)
    if existing:
        report["replaced_claims"] = [f"{ns}/{name}" for ns, names in existing.items() for name in names]
    return report
