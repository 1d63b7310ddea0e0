"""The registry of components and the Prefect tasks every component shares.

A component is a module in tasks/ with this contract (see docs/components.md):

    Target: type[Block]                               the target block class
    default_target() -> Target                        from the environment, or ConfigurationError
    backup(target, session: BackupSession) -> None    write objects, set engine facts/fingerprint
    verify(target | None, manifest, store) -> dict    the component's own check (sha256 is done already)
    RestoreOptions: type[pydantic.BaseModel]
    restore(target, manifest, store, options) -> dict restore aside, verify, cut over; a report
    describe_current_state(target) -> dict            what is there now (pre-restore checklist)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import StrEnum
from types import ModuleType
from typing import Any

from prefect import task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE, CachePolicy

from blocks.store import StoreBlock
from tasks.catalog import verify_backup
from tasks.errors import BackupError, BadInput, ConfigurationError, is_retryable
from tasks.models import Manifest
from tasks.store import backup_session
from tasks.table import policy


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    module: str
    issue: int  # where it is built, for the "not built yet" message


SPECS: dict[str, ComponentSpec] = {
    spec.name: spec
    for spec in (
        ComponentSpec("postgres", "tasks.postgres", 3),
        ComponentSpec("kubernetes", "tasks.velero", 5),
        ComponentSpec("volumes", "tasks.volumes", 5),
        ComponentSpec("etcd", "tasks.etcd", 6),
        ComponentSpec("rabbitmq", "tasks.rabbitmq", 6),
        ComponentSpec("app-state", "tasks.app_state", 6),
        ComponentSpec("postgres-pitr", "tasks.pitr", 4),
    )
}

ComponentName = StrEnum("ComponentName", {n.replace("-", "_"): n for n in SPECS})
ComponentName.__doc__ = "A component of the backup table."


class ComponentNotBuilt(ConfigurationError):
    """The component's module is not in this release yet."""


def load(component: str) -> ModuleType:
    spec = SPECS.get(str(component))
    if spec is None:
        raise BadInput(f"unknown component {component!r}: choose one of {', '.join(SPECS)}")
    try:
        return importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name != spec.module:
            raise
        raise ComponentNotBuilt(
            f"component {spec.name!r} is not built in this release yet (issue #{spec.issue})"
        ) from None


def load_target(component: str, ref: str | Block | None) -> Block:
    """A target block: given, loaded by name ('type-slug/name' or a name of the component's
    target type), or the component's default from the environment."""
    module = load(component)
    if isinstance(ref, Block):
        return ref
    if not ref:
        return module.default_target()
    try:
        return Block.load(ref) if "/" in ref else module.Target.load(ref)
    except ValueError as exc:
        raise ConfigurationError(
            f"no {component} target block named {ref!r}: create it (see docs/blocks.md) ({exc})"
        ) from None


@dataclass
class OncePerTaskRun(CachePolicy):
    """Never reuses a result (each task run id is new), yet gives the result a storage key so
    Prefect persists it: NO_CACHE has no key, and Prefect then writes nothing."""

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str:
        return f"{task_ctx.task.name}-{task_ctx.task_run.id}"


def _retry_transient(task_obj: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:  # the failure of the attempt
        return is_retryable(exc)
    return False


@task(
    task_run_name="backup-{component}",
    cache_policy=OncePerTaskRun(),
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_retry_transient,
)
def backup_task(
    component: str, target: Block, store: StoreBlock, labels: dict[str, str] | None = None
) -> Manifest:
    """Back up one component: stream into the store, verify, write the manifest last."""
    module = load(component)
    with backup_session(store, component, labels) as session:
        module.backup(target, session)
        session.commit(retention=policy(component).retention)
    return session.manifest


@task(task_run_name="verify-{manifest.id}", cache_policy=NO_CACHE)
def verify_task(manifest: Manifest, store: StoreBlock, target: Block | None = None) -> dict[str, Any]:
    """Checksums of every object, then the component's own check."""
    report: dict[str, Any] = verify_backup(store, manifest)
    check = getattr(load(manifest.component), "verify", None)
    if check is not None:
        report["component_check"] = check(target, manifest, store)
    return report


@task(task_run_name="restore-{manifest.id}", cache_policy=NO_CACHE)
def restore_task(
    manifest: Manifest, target: Block, store: StoreBlock, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Restore a verified backup through the component's own aside/verify/cut-over steps."""
    module = load(manifest.component)
    try:
        opts = module.RestoreOptions.model_validate(options or {})
    except Exception as exc:
        raise BadInput(f"invalid restore options for {manifest.component}: {exc}") from None
    return module.restore(target, manifest, store, opts)


@task(task_run_name="describe-{component}", cache_policy=NO_CACHE)
def describe_task(component: str, target: Block) -> dict[str, Any]:
    return load(component).describe_current_state(target)


__all__ = [
    "SPECS",
    "ComponentName",
    "ComponentNotBuilt",
    "BackupError",
    "load",
    "load_target",
    "backup_task",
    "verify_task",
    "restore_task",
    "describe_task",
]
