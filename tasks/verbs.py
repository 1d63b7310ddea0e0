"""The Prefect tasks that run one verb of a component's contract (tasks/components/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE, CachePolicy
from pydantic import ValidationError

from blocks.store import StoreBlock
from tasks.components.registry import load, load_target, spec
from tasks.errors import BadInput, IntegrityError, is_retryable
from tasks.models import Manifest
from tasks.storage.catalog import verify_backup
from tasks.storage.health import is_damage, mark_damaged
from tasks.storage.progress import tracking
from tasks.storage.session import backup_session
from tasks.table import policy


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


def backup_component(
    component: str, target: Block, store: StoreBlock, labels: dict[str, str] | None = None
) -> Manifest:
    """Back up one component: stream into the store, verify, write the manifest last."""
    module = load(component)
    with (
        tracking(f"backup of {component}", f"progress-backup-{component}"),
        backup_session(store, component, labels) as session,
    ):
        module.backup(target, session)
        session.commit(retention=policy(component).retention)
    return session.manifest


def verify_component_backup(
    manifest: Manifest, store: StoreBlock, target: Block | None = None
) -> dict[str, Any]:
    """Checksums of every object, then the component's own check. Damage either finds is
    recorded (storage/health.py), whoever reads: a restore, a drill or `klb verify` as well as the
    sweep, so 'latest', retention and the PITR window skip that backup from then on."""
    report: dict[str, Any] = verify_backup(store, manifest)
    try:
        report["component_check"] = load(manifest.component).verify(target, manifest, store)
    except IntegrityError as exc:
        if is_damage(exc):  # not a wrong key, which proves nothing about the backup
            mark_damaged(store, manifest.id, str(exc))
        raise
    return report


def check_target(component: str, ref: str | Block | None) -> Block | None:
    """The target a component's own check of a stored backup needs, or None when it needs none.
    The Velero-owned components' data is Velero's (our store holds its record): their check asks
    Velero whether it still holds the backup, Completed. Without their target (given, or from the
    environment) ConfigurationError saying which to set: a check that cannot ask Velero must not
    pass as if it had."""
    return load_target(component, ref) if spec(component).velero_owned else None


def restore_options(component: str, options: dict[str, Any] | None) -> Any:
    """The component's RestoreOptions from a dict, or BadInput naming what is wrong."""
    try:
        return load(component).RestoreOptions.model_validate(options or {})
    except ValidationError as exc:
        raise BadInput(f"invalid restore options for {component}: {exc}") from None


def writes_target(component: str, options: dict[str, Any] | None) -> bool:
    """False when a restore of `component` with these options (as recorded) writes nothing to its
    target even when it succeeds: it takes no safety backup and has nothing to roll back. The
    component says so (its optional `writes_target`); without it, every restore writes."""
    says = getattr(load(component), "writes_target", None)
    return True if says is None else bool(says(restore_options(component, options)))


def wrote(
    component: str, options: dict[str, Any] | None, report: dict[str, Any] | None
) -> dict[str, Any] | None:
    """What a restore of `component` with these options (as recorded) that ended with `report`
    wrote to its target: {"created": [...], "overwritten": [...]}, as its component tells it (its
    optional `wrote`: a Velero restore with existing_resource_policy none leaves what exists, and
    may write nothing at all; Kubernetes adds `merged`, what Velero merged into ServiceAccounts).
    None when it cannot tell."""
    says = getattr(load(component), "wrote", None)
    return None if says is None else says(restore_options(component, options), report)


def target_changed(component: str, options: dict[str, Any] | None, report: dict[str, Any] | None) -> bool:
    """Whether a restore that ran to its end changed its target: not when its options write
    nothing there, nor when its component says it wrote nothing (every object already there)."""
    if not writes_target(component, options):
        return False
    done = wrote(component, options, report)
    return done is None or bool(done["created"] or done["overwritten"])


def describe_component(component: str, target: Block) -> dict[str, Any]:
    return load(component).describe_current_state(target)


backup_task = task(
    backup_component,
    name="backup_task",
    task_run_name="backup-{component}",
    cache_policy=OncePerTaskRun(),
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_retry_transient,
)
verify_task = task(
    verify_component_backup, name="verify_task", task_run_name="verify-{manifest.id}", cache_policy=NO_CACHE
)
describe_task = task(
    describe_component, name="describe_task", task_run_name="describe-{component}", cache_policy=NO_CACHE
)


def check_restore(
    manifest: Manifest, target: Block, store: StoreBlock, options: dict[str, Any] | None = None
) -> None:
    """What the component's restore would refuse with these options and this backup (names it
    does not hold, a rename of nothing, a block that does not exist), refused now: before a
    checklist, a safety backup or an approval. A component with no such checks has none here."""
    check = getattr(load(manifest.component), "check_restore", None)
    if check is not None:
        check(target, manifest, store, restore_options(manifest.component, options))


@task(task_run_name="restore-{manifest.id}", cache_policy=NO_CACHE)
def restore_task(
    manifest: Manifest, target: Block, store: StoreBlock, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Restore a verified backup through the component's own aside/verify/cut-over steps."""
    opts = restore_options(manifest.component, options)
    with tracking(f"restore of {manifest.id}", f"progress-restore-{manifest.component}", manifest.size):
        return load(manifest.component).restore(target, manifest, store, opts)


@task(task_run_name="drill-{component}", cache_policy=NO_CACHE)
def drill_task(component: str, target: Block, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict:
    """The component's drill: restore into isolation, verify, clean up (always)."""
    with tracking(f"drill restore of {manifest.id}", f"progress-drill-{component}", manifest.size):
        return load(component).drill(target, manifest, store, drill_id)


@task(task_run_name="drill-cleanup-{component}", cache_policy=NO_CACHE)
def drill_cleanup_task(component: str, target: Block, drill_id: str) -> None:
    """Second line of cleanup: removes anything named after the drill that a crashed drill left."""
    load(component).drill_cleanup(target, drill_id)
