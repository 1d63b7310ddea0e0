"""Backup flows: one component, or every configured component together."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block
from pydantic import BaseModel

from blocks.store import StoreBlock
from flows.common import load_store, result_storage
from tasks.components import SPECS, ComponentName, ComponentNotBuilt, backup_task, load_target
from tasks.errors import ConfigurationError
from tasks.models import Manifest
from tasks.store import preflight


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


def _run_backup(component: str, target, store, labels) -> BackupResult:
    preflight(store)  # a bad bucket, key or credentials fail here, before any engine starts
    task = backup_task.with_options(persist_result=True, result_storage=result_storage(store))
    manifest = task(component, target, store, labels)
    where = f"{store.location}/{component}/{manifest.started_at:%Y-%m-%d}/{manifest.id}"
    return BackupResult.of(manifest, where)


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
    result = _run_backup(component, load_target(component, target), store_block, labels)
    get_run_logger().info("backup %s stored at %s", result.id, result.location)
    create_markdown_artifact(
        key=f"backup-{component}",
        markdown=f"# Backup {result.id}\n\n| field | value |\n|---|---|\n"
        + "".join(f"| {k} | {v} |\n" for k, v in result.model_dump(mode="json").items()),
        description=f"{component} backup",
    )
    return result


class BackupAllResult(BaseModel):
    backups: dict[str, BackupResult]
    not_configured: dict[str, str]
    failed: dict[str, str]


@flow(name="backup-all")
def backup_all(
    components: list[ComponentName] | None = None,
    targets: dict[str, str | Block] | None = None,
    store: str | StoreBlock | None = None,
) -> BackupAllResult:
    """Back up every configured component (or the listed ones). Fails if any backup failed."""
    logger = get_run_logger()
    store_block = load_store(store)
    names = [ComponentName(c).value for c in components] if components else list(SPECS)
    result = BackupAllResult(backups={}, not_configured={}, failed={})
    for name in names:
        try:
            target = load_target(name, (targets or {}).get(name))
        except (ConfigurationError, ComponentNotBuilt) as exc:
            if components:  # asked for by name: a missing configuration is a failure
                result.failed[name] = str(exc)
            else:
                result.not_configured[name] = str(exc)
            continue
        try:
            result.backups[name] = _run_backup(name, target, store_block, {"batch": "backup-all"})
        except Exception as exc:
            logger.error("backup of %s failed: %s", name, exc)
            result.failed[name] = str(exc)
    rows = [f"| {n} | ok | {r.id} | {r.size} |" for n, r in result.backups.items()]
    rows += [f"| {n} | FAILED | {e.splitlines()[0]} | |" for n, e in result.failed.items()]
    rows += [f"| {n} | not configured | {e.splitlines()[0]} | |" for n, e in result.not_configured.items()]
    create_markdown_artifact(
        key="backup-all",
        markdown="# Backup of all components\n\n| component | status | backup / reason | bytes |\n"
        "|---|---|---|---|\n" + "\n".join(rows),
    )
    if result.failed:
        raise RuntimeError(f"backups failed: {', '.join(result.failed)}")
    return result
