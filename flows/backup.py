"""Backup flows: one component, or every configured component together."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block
from pydantic import BaseModel

from blocks.store import StoreBlock
from flows.common import load_store, result_storage
from flows.locks import component_lock
from tasks.components.registry import SPECS, BackupKind, ComponentName, load_target
from tasks.errors import BadInput, ConfigurationError
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
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    try:
        if flow_run.id and flow_run.deployment_id:
            with get_client(sync_client=True) as client:
                if client.read_flow_run(flow_run.id).auto_scheduled:
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
    with tracked("backup", component) as run:  # metrics: failures are pushed too (try/finally)
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


@flow(name="backup-component")
def backup_component(
    component: ComponentName,
    target: str | Block | None = None,
    store: str | StoreBlock | None = None,
    labels: dict[str, str] | None = None,
) -> BackupResult:
    """Back up one component into the store. `target`/`store` are block names; empty = defaults."""
    component = ComponentName(component).value
    store_block = load_store(store)
    result = _run_backup(component, load_target(component, target), store_block, _labels(labels))
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
    targets: dict[str, str | Block] | None = None,
    store: str | StoreBlock | None = None,
) -> BackupAllResult:
    """Back up every configured component (or the listed ones). Fails if any backup failed, or
    if none is configured (a run that backs up nothing must not look like a success)."""
    logger = get_run_logger()
    if components is not None and not components:
        raise BadInput(
            "components=[] names no component: leave it out for every configured one, or name some"
        )
    store_block = load_store(store)
    names = [ComponentName(c).value for c in components] if components else list(SPECS)
    result = BackupAllResult(backups={}, not_configured={}, failed={})
    rp_id, manifests = new_recovery_point_id(), {}
    for name in names:
        try:
            target = load_target(name, (targets or {}).get(name))
        except ConfigurationError as exc:
            if components:  # asked for by name: a missing configuration is a failure
                result.failed[name] = str(exc)
            else:
                result.not_configured[name] = str(exc)
            continue
        try:
            labels = _labels({"batch": "backup-all", LABEL: rp_id})
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
        raise RuntimeError(f"backups failed: {', '.join(result.failed)}")
    if not result.backups:
        raise ConfigurationError(
            "backup-all found no configured component, so nothing was backed up: configure the "
            "targets (docs/deployments.md, scripts/create_blocks.py) or name the components. "
            + "; ".join(f"{n}: {e.splitlines()[0]}" for n, e in result.not_configured.items())
        )
    return result
