"""Disaster-recovery scenarios of the runbook for Kubernetes: namespace corruption (2), data
corruption (3), and a partial restore.

Each one verifies the backup it will use before changing anything, and takes a forensic backup
of the broken state first. Forensic backups are stored as components `kubernetes-forensic` /
`volumes-forensic`, so that "latest" never picks the broken state for a later restore.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE

from blocks.kubernetes import VeleroTarget
from blocks.store import StoreBlock
from flows.common import load_store
from flows.locks import component_lock
from tasks.components import kubernetes as velero
from tasks.components import volumes
from tasks.components.kubernetes import ExistingResourcePolicy
from tasks.components.kubernetes import api as kube
from tasks.components.registry import load_target
from tasks.errors import BackupError, BadInput, NotFound
from tasks.models import Manifest
from tasks.storage.catalog import LATEST, get_backup, list_backups, verify_backup
from tasks.storage.session import backup_session
from tasks.table import policy
from tasks.verbs import restore_task, verify_task

PVC_RESOURCES = volumes.VOLUME_RESOURCES


def _velero_target(component: str, ref: str | Block | None) -> VeleroTarget:
    target = load_target(component, ref)
    if not isinstance(target, VeleroTarget):
        raise BadInput(f"target {ref!r} is a {type(target).__name__}, not a Velero target")
    return target


def _holds(store: StoreBlock, manifest: Manifest, namespace: str, pvcs: list[str] | None = None) -> bool:
    inv = velero.load_document(store, manifest)["inventory"]
    if namespace not in inv:
        return False
    held = set(inv[namespace].get("persistentvolumeclaims", []))
    return pvcs is None or set(pvcs) <= held


@task(task_run_name="forensic-backup-{namespace}", cache_policy=NO_CACHE)
def forensic_backup_task(
    target: VeleroTarget, store: StoreBlock, namespace: str, component: str
) -> str | None:
    """Keep the broken state (for the post-mortem) before it is replaced; None if it is gone."""
    if not kube.namespace_exists(kube.connect(target.kube), namespace):
        get_run_logger().warning("namespace %s does not exist: no forensic backup to take", namespace)
        return None
    retention = policy(component).retention
    hours = retention.total_seconds() / 3600
    overrides = {"include_namespaces": [namespace], "exclude_namespaces": [], "ttl_hours": hours}
    with backup_session(store, f"{component}-forensic", {"purpose": "forensic", "namespace": namespace}) as s:
        if component == "volumes":
            volumes.run_backup(target, s, volumes.spec(target, **overrides))
        else:
            velero.run_backup(target, s, velero.BackupSpec.of(target, label_selector={}, **overrides))
        s.commit(retention=retention)
    return s.id


@task(task_run_name="delete-namespace-{namespace}", cache_policy=NO_CACHE)
def delete_namespace_task(target: VeleroTarget, namespace: str) -> None:
    kube.delete_namespace(kube.connect(target.kube), namespace, interval=target.poll_interval_seconds)


@task(task_run_name="delete-pvcs-{namespace}", cache_policy=NO_CACHE)
def delete_pvcs_task(target: VeleroTarget, namespace: str, names: list[str]) -> None:
    k = kube.connect(target.kube)
    for name in names:
        with contextlib.suppress(NotFound):
            kube.delete_pvc(k, namespace, name)
    kube.wait_for(
        lambda: not ({p["name"] for p in kube.list_pvcs(k, namespace)} & set(names)),
        600,
        target.poll_interval_seconds,
        f"PVCs {names} in {namespace} to be deleted",
    )


def _report(key: str, title: str, report: dict[str, Any]) -> None:
    rows = "".join(f"| {k} | {v} |\n" for k, v in report.items())
    create_markdown_artifact(key=key, markdown=f"# {title}\n\n| field | value |\n|---|---|\n{rows}")


@flow(name="namespace-corruption")
def namespace_corruption(
    namespace: str,
    backup_id: str = LATEST,
    target: str | Block | None = None,
    store: str | StoreBlock | None = None,
) -> dict[str, Any]:
    """Runbook scenario 2: forensic backup of the broken namespace, delete it, restore it from
    the newest (or the given) Kubernetes backup that holds it, verify its objects."""
    logger = get_run_logger()
    store_block = load_store(store)
    target_block = _velero_target("kubernetes", target)
    if backup_id == LATEST:
        holding = [
            m for m in reversed(list_backups(store_block, "kubernetes")) if _holds(store_block, m, namespace)
        ]
        if not holding:
            raise NotFound(f"no kubernetes backup holds namespace {namespace!r}: nothing to restore it from")
        manifest = holding[0]
    else:
        manifest = get_backup(store_block, backup_id, "kubernetes")
        if not _holds(store_block, manifest, namespace):
            raise BadInput(f"backup {manifest.id} does not hold namespace {namespace!r}")
    verify_task(manifest, store_block, target_block)  # before anything is deleted
    with component_lock("kubernetes"):  # no scheduled backup or other restore in between
        forensic = forensic_backup_task(target_block, store_block, namespace, "kubernetes")
        delete_namespace_task(target_block, namespace)
        restored = restore_task(manifest, target_block, store_block, {"namespaces": [namespace]})
    report = {"namespace": namespace, "backup_id": manifest.id, "forensic_backup": forensic, **restored}
    logger.info("namespace %s restored from %s (forensic backup %s)", namespace, manifest.id, forensic)
    _report("namespace-corruption", f"Namespace {namespace} restored", report)
    return report


@flow(name="data-corruption")
def data_corruption(
    namespace: str,
    pvcs: list[str] | None = None,
    before: datetime | None = None,
    target: str | Block | None = None,
    store: str | StoreBlock | None = None,
) -> dict[str, Any]:
    """Runbook scenario 3: restore PVCs from the newest volumes backup (at/before `before`) that
    verifies good. Apps are quiesced, the corrupted PVCs are kept in a forensic backup, deleted
    (Velero skips existing claims, which is why the runbook's restore did nothing) and restored
    with their data; the apps come back with exactly their replica counts."""
    logger = get_run_logger()
    store_block = load_store(store)
    target_block = _velero_target("volumes", target)
    rejected: dict[str, str] = {}
    manifest = None
    for candidate in reversed(list_backups(store_block, "volumes", until=before)):
        try:
            if not _holds(store_block, candidate, namespace, pvcs):
                rejected[candidate.id] = f"does not hold the PVCs of {namespace}"
                continue
            verify_backup(store_block, candidate)
            volumes.verify(target_block, candidate, store_block)
        except BackupError as exc:
            rejected[candidate.id] = str(exc)
            logger.warning("backup %s rejected: %s", candidate.id, exc)
            continue
        manifest = candidate
        break
    if manifest is None:
        raise NotFound(f"no volumes backup of {namespace} verifies good: {rejected or 'there are none'}")
    doc = velero.load_document(store_block, manifest)
    names = pvcs or doc["inventory"][namespace]["persistentvolumeclaims"]
    with component_lock("volumes"), kube.quiesced(target_block.kube, namespace) as replicas:
        forensic = forensic_backup_task(target_block, store_block, namespace, "volumes")
        delete_pvcs_task(target_block, namespace, names)
        restored = restore_task(
            manifest,
            target_block,
            store_block,
            {"namespaces": [namespace], "resources": PVC_RESOURCES, "restore_pvs": True},
        )
    report = {
        "namespace": namespace,
        "backup_id": manifest.id,
        "pvcs": names,
        "forensic_backup": forensic,
        "replicas_restored": replicas,
        "rejected_backups": rejected,
        **restored,
    }
    _report("data-corruption", f"PVCs of {namespace} restored", report)
    return report


@flow(name="partial-restore")
def partial_restore(
    backup_id: str,
    namespaces: list[str],
    resources: list[str] | None = None,
    names: list[str] | None = None,
    namespace_mapping: dict[str, str] | None = None,
    existing_resource_policy: ExistingResourcePolicy = ExistingResourcePolicy.none,
    target: str | Block | None = None,
    store: str | StoreBlock | None = None,
) -> dict[str, Any]:
    """A namespace, some resource types, or single objects (`names`) from a Kubernetes backup."""
    if not namespaces:
        raise BadInput("name the namespaces to restore (a partial restore of everything is a full restore)")
    store_block = load_store(store)
    target_block = _velero_target("kubernetes", target)
    manifest = get_backup(store_block, backup_id, "kubernetes")
    verify_task(manifest, store_block, target_block)
    options = {
        "namespaces": namespaces,
        "resources": resources,
        "names": names,
        "namespace_mapping": namespace_mapping or {},
        "existing_resource_policy": ExistingResourcePolicy(existing_resource_policy).value,
    }
    with component_lock("kubernetes"):
        report = {"backup_id": manifest.id, **restore_task(manifest, target_block, store_block, options)}
    _report("partial-restore", f"Partial restore from {manifest.id}", report)
    return report
