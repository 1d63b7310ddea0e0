"""Disaster-recovery scenarios of the runbook: the full cluster restore (1), namespace
corruption (2), data corruption (3), and a partial restore.

Each one verifies the backup it will use before changing anything, and takes a forensic backup
of the broken state first. Forensic backups are backups of `kubernetes` / `volumes` with the
label kind=forensic, so that "latest" never picks the broken state for a later restore. Each
write into the target leaves a restore record (its id: `restore_id` in the report;
tasks/operations/written_records.py), so a rollback of an earlier checklist restore into the same
target is refused instead of silently undoing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks.store import StoreBlock
from flows.common import StoreRef, TargetBlock, VeleroRef, load_store
from flows.full_cluster_steps import run_steps
from flows.inputs import per_component
from flows.locks import component_lock, full_restore_lock, held_through
from tasks.components import kubernetes as velero
from tasks.components.kubernetes import ExistingResourcePolicy
from tasks.components.kubernetes.quiesce import quiesced
from tasks.errors import BackupError, BadInput, ComponentFailed, NotFound
from tasks.markdown import fields_table
from tasks.metrics import tracked
from tasks.operations.disaster import (
    PVC_RESOURCES,
    backup_holding_namespace,
    delete_namespace_task,
    delete_pvcs_task,
    forensic_backup_task,
    newest_good_volumes_backup,
    refuse_other_claims,
    refuse_retained_volumes,
    refuse_running_writers,
    refuse_unpermitted,
    velero_target,
)
from tasks.operations.full_restore import (
    check_resume,
    read_step,
    run_key,
)
from tasks.operations.plan import build_plan, plan_markdown
from tasks.operations.scope import backup_for
from tasks.operations.written_records import recorded_restore
from tasks.storage.catalog import LATEST
from tasks.verbs import restore_options, restore_task, target_changed, verify_task


def _report(key: str, title: str, report: dict[str, Any]) -> None:
    create_markdown_artifact(key=key, markdown=fields_table(title, report))


@contextlib.contextmanager
def _after_deleting(deleted: str, forensic: str | None, again: str) -> Iterator[None]:
    """A restore that fails after the scenario deleted what it replaces leaves the target without
    it: the failure says so, where the broken state is kept, and that the same call finishes the
    job (it restores what is missing), not only the engine's message."""
    try:
        yield
    except Exception as exc:
        kept = f"its state before is in forensic backup {forensic}" if forensic else "no forensic backup"
        message = (
            f"{deleted} and the restore failed: {exc}. The target is without them now ({kept}); "
            f"fix the cause and run {again} again"
        )
        raise (ComponentFailed if isinstance(exc, BackupError) else RuntimeError)(message) from exc


@flow(name="namespace-corruption")
def namespace_corruption(
    namespace: str,
    backup_id: str = LATEST,
    target: VeleroRef = None,
    store: StoreRef = None,
) -> dict[str, Any]:
    """Runbook scenario 2: forensic backup of the broken namespace, delete it, restore it from
    the newest (or the given) Kubernetes backup that holds it, verify its objects.

    Args:
        namespace: The Kubernetes namespace to recover.
        backup_id: Which backup: 'latest' (the newest verified backup of the component) or an id as
            listed by `python -m flows.catalog list`, `<component>-<YYYYMMDDTHHMMSSZ>-<6 hex>`, e.g.
            kubernetes-20260101T020000Z-a1b2c3.
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
    """
    logger = get_run_logger()
    with tracked("restore", "kubernetes"):  # metrics: failures are pushed too (try/finally)
        store_block = load_store(store)
        target_block = velero_target("kubernetes", target)
        manifest = backup_holding_namespace(store_block, target_block, backup_id, namespace)
        verify_task(manifest, store_block, target_block)  # before anything is deleted
        doc = velero.load_document(store_block, manifest)
        claims = doc["inventory"][namespace].get("persistentvolumeclaims", [])
        refuse_retained_volumes(target_block, doc, namespace, claims)
        options = {"namespaces": [namespace]}
        with component_lock("kubernetes"):  # no scheduled backup or other restore in between
            forensic = forensic_backup_task(target_block, store_block, namespace, "kubernetes")
            with (
                recorded_restore(store_block, "namespace-corruption", manifest, target_block, options) as w,
                _after_deleting(
                    f"namespace {namespace} was deleted",
                    forensic,
                    f"namespace_corruption({namespace!r}, backup_id={manifest.id!r})",
                ),
            ):
                delete_namespace_task(target_block, namespace)
                w.changed = True  # the namespace is gone: the target changed, whatever follows
                restored = w.report = restore_task(manifest, target_block, store_block, options)
    report = {
        "namespace": namespace,
        "backup_id": manifest.id,
        "forensic_backup": forensic,
        "restore_id": w.id,
        **restored,
    }
    logger.info("namespace %s restored from %s (forensic backup %s)", namespace, manifest.id, forensic)
    _report("namespace-corruption", f"Namespace {namespace} restored", report)
    return report


@flow(name="data-corruption")
def data_corruption(
    namespace: str,
    pvcs: list[str] | None = None,
    before: datetime | None = None,
    target: VeleroRef = None,
    store: StoreRef = None,
) -> dict[str, Any]:
    """Runbook scenario 3: restore PVCs from the newest volumes backup (at/before `before`) that
    verifies good. Apps are quiesced, the corrupted PVCs are kept in a forensic backup, deleted
    (Velero skips existing claims, which is why the runbook's restore did nothing) and restored
    with their data; the apps come back with exactly their replica counts.

    Args:
        namespace: The Kubernetes namespace to recover.
        pvcs: The PersistentVolumeClaims to restore (left out: every PVC of the namespace in the
            backup; [] is refused).
        before: Use the newest backup taken before this time (with a timezone); empty: the newest
            that verifies good.
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
    """
    if pvcs is not None and not pvcs:  # never "every PVC": those are deleted and restored
        raise BadInput("pvcs=[] names no PVC: leave it out for every PVC of the namespace, or name some")
    with tracked("restore", "volumes"):  # metrics: failures are pushed too (try/finally)
        store_block = load_store(store)
        target_block = velero_target("volumes", target)
        manifest, rejected = newest_good_volumes_backup(store_block, target_block, namespace, pvcs, before)
        doc = velero.load_document(store_block, manifest)
        names = pvcs or doc["inventory"][namespace]["persistentvolumeclaims"]
        refuse_other_claims(target_block, doc, namespace, names)
        refuse_running_writers(target_block, namespace, names)
        refuse_unpermitted(target_block, namespace, names)
        refuse_retained_volumes(target_block, doc, namespace, names)
        forensic, replicas, restored = _replace_pvcs(store_block, target_block, manifest, namespace, names)
    report = {
        "namespace": namespace,
        "backup_id": manifest.id,
        "restore_id": restored.pop("restore_id"),
        "pvcs": names,
        "forensic_backup": forensic,
        "replicas_restored": replicas,
        "rejected_backups": rejected,
        **restored,
    }
    _report("data-corruption", f"PVCs of {namespace} restored", report)
    return report


def _replace_pvcs(
    store: StoreBlock, target: Any, manifest: Any, namespace: str, names: list[str]
) -> tuple[str, dict[str, int], dict[str, Any]]:
    """A forensic backup, then with the apps quiesced the claims deleted and restored with their
    data; the restore's report holds its record's id (`restore_id`)."""
    options = {"namespaces": [namespace], "resources": PVC_RESOURCES, "restore_pvs": True}
    with component_lock("volumes"):
        # the forensic backup first, while the apps run: file-system backup reads volumes only
        # through running pods (Velero makes no PodVolumeBackup for a pod that is not Running)
        forensic = forensic_backup_task(target, store, namespace, "volumes")
        with (
            recorded_restore(store, "data-corruption", manifest, target, options) as write,
            quiesced(target.kube, namespace) as replicas,
        ):
            delete_pvcs_task(target, namespace, names)
            write.changed = True  # the claims are gone: the target changed, whatever follows
            again = f"data_corruption({namespace!r}, pvcs={names!r})"
            with _after_deleting(f"claims {names} in {namespace} were deleted", forensic, again):
                restored = write.report = restore_task(manifest, target, store, options)
    return forensic, replicas, {**restored, "restore_id": write.id}


@flow(name="partial-restore")
def partial_restore(
    backup_id: str,
    namespaces: list[str],
    resources: list[str] | None = None,
    names: list[str] | None = None,
    namespace_mapping: dict[str, str] | None = None,
    existing_resource_policy: ExistingResourcePolicy = ExistingResourcePolicy.none,
    target: VeleroRef = None,
    store: StoreRef = None,
) -> dict[str, Any]:
    """A namespace, some resource types, or single objects (`names`) from a Kubernetes backup.

    Args:
        backup_id: Which backup: 'latest' (the newest verified backup of the component) or an id as
            listed by `python -m flows.catalog list`, `<component>-<YYYYMMDDTHHMMSSZ>-<6 hex>`, e.g.
            kubernetes-20260101T020000Z-a1b2c3.
        namespaces: The namespaces of the backup to restore.
        resources: Resource types to restore, e.g. ["configmaps", "secrets"] (empty: all).
        names: Single objects to restore by name (of the given resource types).
        namespace_mapping: Restore a namespace under another name: {"source": "destination"}.
        existing_resource_policy: none: leave objects that exist as they are; update: overwrite them
            (a safety backup is taken first).
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
    """
    if not namespaces:
        raise BadInput("name the namespaces to restore (a partial restore of everything is a full restore)")
    store_block = load_store(store)
    target_block = velero_target("kubernetes", target)
    options = {
        "namespaces": namespaces,
        "resources": resources,
        "names": names,
        "namespace_mapping": namespace_mapping or {},
        "existing_resource_policy": ExistingResourcePolicy(existing_resource_policy).value,
    }
    manifest = backup_for(store_block, backup_id, "kubernetes", target_block, options)
    verify_task(manifest, store_block, target_block)
    with (
        tracked("restore", "kubernetes"),
        component_lock("kubernetes"),
        recorded_restore(store_block, "partial-restore", manifest, target_block, options) as write,
    ):
        write.report = restore_task(manifest, target_block, store_block, options)
        report = {"backup_id": manifest.id, "restore_id": write.id, **write.report}
    title = f"Partial restore from {manifest.id}"
    if not target_changed("kubernetes", options, report):  # every object there already
        title += ": nothing written"
    _report("partial-restore", title, report)
    return report


@flow(name="full-cluster-restore")
def full_cluster_restore(
    recovery_point: str = "latest",
    targets: dict[str, str | TargetBlock] | None = None,
    store: StoreRef = None,
    dry_run: bool = True,
    run_id: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """DR scenario 1: bring every component back from one recovery point, in order (namespaces
    and CRDs, volumes, databases, etcd plan, RabbitMQ, app state, verify). Shows the plan first;
    `dry_run=False` to act. Each step's record is kept under <prefix>/dr-runs/<run-id>/: re-run
    with the same `run_id` to resume, completed steps are skipped.

    Args:
        recovery_point: 'latest' (the newest recovery point) or a recovery point id (a set of
            backups taken together by backup-all).
        targets: Component name -> name of its target block (from Python, block objects); empty:
            each component's default target.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
        dry_run: True: only show what would be done; False: do it.
        run_id: Resume this earlier run (its id is in the run's report); empty: a new run.
        options: Restore options of the component (its RestoreOptions fields, docs/components.md),
            e.g. {"namespaces": ["lambda"], "existing_resource_policy": "update"} for kubernetes.
    """
    targets = per_component("targets", targets)
    options = per_component("options", options)
    for component, given in options.items():  # a typo fails now, not after earlier steps restored
        restore_options(component, given)
    store_block = load_store(store)
    run = read_step(store_block, run_key(store_block, run_id)) if run_id else None
    settings = None
    if run_id and run is None:  # a dry run of a resume too: it would show the plan of 'latest'
        raise NotFound(
            f"no full cluster restore run {run_id} to resume in {store_block.location}: copy the run id "
            "from the failed run's message or report, or leave run_id out for a new run"
        )
    if run is not None:
        if recovery_point not in ("latest", run["recovery_point"]):
            raise BadInput(
                f"run {run_id} restores recovery point {run['recovery_point']}, not {recovery_point}: "
                "resume it with the same point, or start a new run"
            )
        recovery_point = run["recovery_point"]
        # a resume restores and verifies into what the run started with, or is refused
        targets, options, settings = check_resume(run, targets, options)
    plan = build_plan(store_block, recovery_point=recovery_point, targets=targets)
    markdown = plan_markdown(plan, "Full cluster restore plan" + (" (dry run)" if dry_run else ""))
    # what a person approves after a dry run is this point: 'latest' may be a newer one by then
    act_with = {"recovery_point": plan.source, "dry_run": False}
    if dry_run and recovery_point == "latest":
        markdown += (
            f"\n'latest' is resolved again when you act and may then be a newer recovery point: to "
            f"restore exactly this plan, run with recovery_point='{plan.source}' and dry_run=False.\n"
        )
    create_markdown_artifact(key="full-cluster-restore-plan", markdown=markdown)
    if dry_run:
        return {
            "dry_run": True,
            "recovery_point": plan.source,
            "act_with": act_with,
            "plan": plan.model_dump(mode="json"),
        }
    # one run at a time: its steps never interleave with another's; and no kubernetes or volumes
    # backup between its steps (claims empty until the volumes step, apps quiesced in it)
    with full_restore_lock(), held_through("kubernetes"):
        return run_steps(store_block, plan, run, run_id, settings, targets, options)
