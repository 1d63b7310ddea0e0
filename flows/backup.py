"""Backup flows: one component, or every configured component together."""

from __future__ import annotations

import os
import time
from datetime import datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import deployment
from prefect.runtime import flow_run as current_run
from pydantic import BaseModel

from flows.common import StoreRef, TargetBlock, TargetRef, load_store, result_storage
from flows.inputs import component_names, per_component, user_labels
from flows.locks import component_lock
from tasks.components.registry import BackupKind, ComponentName, load_target
from tasks.errors import ComponentFailed, ConfigurationError, is_retryable
from tasks.markdown import fields_table
from tasks.metrics import tracked
from tasks.models import KIND_LABEL, Manifest
from tasks.operations.recovery import LABEL, new_recovery_point_id, write_recovery_point
from tasks.storage.replicate import dr_configured, replicate_task
from tasks.storage.session import preflight
from tasks.verbs import backup_task


class BackupResult(BaseModel):
    id: str
    component: str
    location: str
    source_time: datetime
    objects: int
    size: int
    raw_size: int
    verified: bool

    @classmethod
    def of(cls, manifest: Manifest, location: str) -> BackupResult:
        return cls(
            id=manifest.id,
            component=manifest.component,
            location=location,
            source_time=manifest.source_time,
            objects=len(manifest.objects),
            size=manifest.size,
            raw_size=manifest.raw_size,
            verified=manifest.verified_at is not None,
        )


def _kind_of_this_run() -> BackupKind:
    """scheduled when a deployment's schedule started this run, on-demand otherwise."""
    try:
        if current_run.id and deployment.id:  # a run of a deployment (flow_run has no deployment_id)
            with get_client(sync_client=True) as client:
                if client.read_flow_run(current_run.id).auto_scheduled:
                    return BackupKind.scheduled
    except Exception as exc:  # the kind is a label: never fail a backup over it
        get_run_logger().warning("could not tell whether a schedule started this run: %s", exc)
    return BackupKind.on_demand


def _labels(labels: dict[str, str] | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's labels; `kind` (why it was taken) defaults to this run's."""
    out = {**(labels or {}), **(extra or {})}
    out.setdefault(KIND_LABEL, _kind_of_this_run().value)
    return out


def _backup(component: str, target, store, labels) -> tuple[Manifest, BackupResult]:
    """`target`/`store`: blocks or their names, loaded inside the tracked run: a scheduled backup
    whose block cannot be loaded (deleted, renamed, unset) is a failed backup, and its failure is
    pushed for the BackupFailed alert like any other."""
    with tracked("backup", component) as run:  # metrics: failures are pushed too (try/finally)
        store = load_store(store)
        target = load_target(component, target)
        preflight(store)  # a bad bucket, key or credentials fail here, before any engine starts
        task = backup_task.with_options(persist_result=True, result_storage=result_storage(store))
        with component_lock(component):  # never while a restore of this component runs
            manifest = task(component, target, store, labels)
        run.gauges["backup_size_bytes"] = manifest.size
    if dr_configured():  # $KLB_DR_STORE: copy (or verify) the backup in the DR store
        replicate_task(manifest, store)
    where = f"{store.location}/{component}/{manifest.started_at:%Y-%m-%d}/{manifest.id}"
    return manifest, BackupResult.of(manifest, where)


def _run_backup(component: str, target, store, labels) -> BackupResult:
    return _backup(component, target, store, labels)[1]


def _with_run_id(labels: dict[str, str] | None) -> dict[str, str]:
    """The manifest records which flow run made the backup (label flow_run_id)."""
    run_id = current_run.get_id()
    return {**(labels or {}), **({"flow_run_id": str(run_id)} if run_id else {})}


def _name_run(name: str) -> None:
    """Rename the current flow run (best effort: a name is a convenience, never a failure)."""
    run_id = current_run.get_id()
    if run_id:
        try:
            with get_client(sync_client=True) as client:
                client.set_flow_run_name(run_id, name)
        except Exception as exc:
            get_run_logger().debug("could not rename the flow run: %s", exc)


def retry_policy() -> tuple[int, float]:
    """(retries, delay in seconds) of a backup after a transient failure: KLB_BACKUP_RETRIES
    (default 2) and KLB_BACKUP_RETRY_DELAY_SECONDS (default 120): a 6-hourly backup that hit a
    network blip is retried within minutes, not at its next slot."""
    return int(os.environ.get("KLB_BACKUP_RETRIES", "2")), float(
        os.environ.get("KLB_BACKUP_RETRY_DELAY_SECONDS", "120")
    )


def _backup_run_name() -> str:
    component = current_run.parameters.get("component")
    return f"backup-{getattr(component, 'value', component)}"


@flow(name="backup-component", flow_run_name=_backup_run_name)
def backup_component(
    component: ComponentName,
    target: TargetRef = None,
    store: StoreRef = None,
    labels: dict[str, str] | None = None,
) -> BackupResult:
    """Back up one component into the store. `target`/`store` are block names; empty = defaults.

    Args:
        component: Which component: kubernetes, volumes, postgres, postgres-pitr, etcd, rabbitmq or
            app-state (backup-table.yaml lists them).
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
        labels: Extra labels recorded in the backup's manifest (key: value).
    """
    component = ComponentName(component).value
    labels = user_labels(labels)
    retries, delay = retry_policy()
    for attempt in range(retries + 1):
        try:
            result = _run_backup(component, target, store, _with_run_id(_labels(labels)))
            break
        except Exception as exc:  # only what may succeed on a second try is retried
            if attempt >= retries or not is_retryable(exc):
                raise
            get_run_logger().warning(
                "backup of %s failed (%s), transient: retry %d/%d in %.0fs",
                component,
                exc,
                attempt + 1,
                retries,
                delay,
            )
            time.sleep(delay)
    _name_run(f"backup-{result.id}")
    get_run_logger().info("backup %s stored at %s", result.id, result.location)
    create_markdown_artifact(
        key=f"backup-{component}",
        markdown=fields_table(f"Backup {result.id}", result.model_dump(mode="json")),
        description=f"{component} backup",
    )
    return result


class BackupAllResult(BaseModel):
    backups: dict[str, BackupResult]
    not_configured: dict[str, str]
    failed: dict[str, str]
    recovery_point: str | None = None  # binds the backups of this run (tasks/operations/recovery.py)


@flow(name="backup-all")
def backup_all(
    components: list[ComponentName] | None = None,
    targets: dict[str, str | TargetBlock] | None = None,
    store: StoreRef = None,
) -> BackupAllResult:
    """Back up every configured component (or the listed ones). Fails if any backup failed, or
    if none is configured (a run that backs up nothing must not look like a success).

    Args:
        components: The components to include (empty: every component that has a target configured).
        targets: Component name -> name of its target block (from Python, block objects); empty:
            each component's default target.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
    """
    logger = get_run_logger()
    names = component_names(components)  # None: every configured one; [] is a mistake
    targets = per_component("targets", targets)
    store_block = load_store(store)
    result = BackupAllResult(backups={}, not_configured={}, failed={})
    rp_id, manifests = new_recovery_point_id(), {}
    for name in names:
        target = (targets or {}).get(name)
        if not components:  # every configured one: an unconfigured component is skipped, not failed
            try:
                target = load_target(name, target)
            except ConfigurationError as exc:
                result.not_configured[name] = str(exc)
                continue
        try:  # asked for by name: _backup loads the target inside its tracked run, so a missing
            # configuration is a failed backup, pushed for the BackupFailed alert like any other
            labels = _with_run_id(_labels({"batch": "backup-all", LABEL: rp_id}))
            manifests[name], result.backups[name] = _backup(name, target, store_block, labels)
        except Exception as exc:
            logger.error("backup of %s failed: %s", name, exc)
            result.failed[name] = str(exc)
    if manifests:  # written after every member's manifest: last, like a manifest
        write_recovery_point(store_block, rp_id, manifests, result.failed, result.not_configured)
        result.recovery_point = rp_id
    rows = [f"| {n} | ok | {r.id} | {r.size} |" for n, r in result.backups.items()]
    rows += [f"| {n} | FAILED | {e.splitlines()[0]} | |" for n, e in result.failed.items()]
    rows += [f"| {n} | not configured | {e.splitlines()[0]} | |" for n, e in result.not_configured.items()]
    create_markdown_artifact(
        key="backup-all",
        markdown=f"# Backup of all components\n\nRecovery point: `{result.recovery_point}`\n\n"
        "| component | status | backup / reason | bytes |\n"
        "|---|---|---|---|\n" + "\n".join(rows),
    )
    if result.failed:
        raise ComponentFailed(
            "backups failed: "
            + "; ".join(f"{n}: {e.splitlines()[0] if e else '?'}" for n, e in result.failed.items())
            + ". Fix what each says (the backup-all artifact lists them) and run backup-all again"
            + (f"; the others are in recovery point {result.recovery_point}" if result.recovery_point else "")
        )
    if not result.backups:
        raise ConfigurationError(
            "backup-all found no configured component, so nothing was backed up: configure the "
            "targets (docs/deployments.md, scripts/create_blocks.py) or name the components. "
            + "; ".join(f"{n}: {e.splitlines()[0]}" for n, e in result.not_configured.items())
        )
    return result
