"""Point-in-time recovery.

pitr_postgres      window -> base backup -> NEW instance paused at the target -> verified (no
                   restore record: it writes into no target a rollback could put anything back in)
promote_pitr       the separate, explicit step that makes that instance writable
check_wal_archive  archiving configuration + the recoverable window, as an artifact
pitr_kubernetes    the newest Velero backup at or before the target, restored through restore_component
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.pitr import PitrTarget
from blocks.store import StoreBlock
from flows.common import PitrRef, StoreRef, TargetRef, VeleroRef, load_store
from tasks.components import postgres_pitr as pitr
from tasks.components.postgres_pitr.targets import TargetTime, parse_target
from tasks.components.postgres_pitr.window import ArchiveReport
from tasks.components.registry import load_target
from tasks.errors import BadInput, ConfigurationError
from tasks.markdown import fields_table
from tasks.operations.scope import backup_for
from tasks.storage.catalog import LATEST, backup_at_or_before, get_backup
from tasks.verbs import restore_options


def _target(ref: TargetRef) -> PitrTarget:
    block = load_target("postgres-pitr", ref)
    if not isinstance(block, PitrTarget):
        raise BadInput(f"target {ref!r} is a {type(block).__name__}, not a PitrTarget")
    return block


def _window_markdown(report: ArchiveReport) -> str:
    rows = [
        f"| {w.timeline} | {w.start_time.isoformat()} | {w.end_time.isoformat() if w.end_time else '-'} "
        f"| {w.first_segment} .. {w.last_segment} ({w.segments}) | {w.end_lsn}"
        f"{f' (timeline {w.branched_to} branched off)' if w.branched_to is not None else ''} "
        f"| {', '.join(b.id for b in w.base_backups)} |"
        for w in report.windows
    ]
    gaps = ", ".join(report.missing_segments) or "none"
    return (
        f"Archive `{report.archive}` server `{report.server_name}` ({report.engine}): "
        f"{report.wal_files} WAL files, last segment `{report.last_archived_segment}`, gaps: {gaps}\n\n"
        "| timeline | from (base backup end) | to (last transaction, exclusive) | segments | latest LSN "
        "| base backups |\n|---|---|---|---|---|---|\n" + "\n".join(rows or ["| - | no window | | | | |"])
    )


@task(task_run_name="check-archive-config", cache_policy=NO_CACHE)
def check_config_task(target: PitrTarget) -> dict[str, Any]:
    return pitr.check_config(target)


@task(task_run_name="wal-window", cache_policy=NO_CACHE)
def wal_window_task(target: PitrTarget, store: StoreBlock) -> ArchiveReport:
    return pitr.wal_archive(target, store)


@flow(name="check-wal-archive")
def check_wal_archive(target: PitrRef = None, store: StoreRef = None, require: bool = True) -> dict[str, Any]:
    """Archiving configuration (archive_mode, archive_command, wal_level, pg_stat_archiver) and the
    recoverable window. Fails with 'PITR not possible: ...' when `require` and something is wrong.

    Args:
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
        require: Fail the run ('PITR not possible: ...') when archiving or the window is not right.
    """
    target_block, store_block = _target(target), load_store(store)
    config = check_config_task(target_block)
    report = wal_window_task(target_block, store_block)
    problems = list(config["problems"])
    warnings = "".join(f"- warning: {w}\n" for w in config["warnings"])
    if not report.windows:
        problems.append(report.describe())
    if report.missing_segments:
        problems.append(f"WAL archive has gaps before {', '.join(report.missing_segments)}")
    if report.current is not None and report.current.branched_to is not None:
        problems.append(
            f"timeline {report.current.branched_to} branched off timeline {report.current.timeline} at LSN "
            f"{report.current.end_lsn} and has no base backup: nothing after the branch is recoverable; "
            "take a base backup (backup_component('postgres-pitr'))"
        )
    settings = "".join(f"| {k} | `{v}` |\n" for k, v in config["settings"].items())
    archiver = "".join(f"| {k} | {v} |\n" for k, v in config["archiver"].items())
    create_markdown_artifact(
        key="pitr-wal-archive",
        markdown="# WAL archive check\n\n"
        + ("**PITR not possible**: " + "; ".join(problems) if problems else "PITR possible.")
        + "\n\n"
        + warnings
        + "\n| setting | value |\n|---|---|\n"
        + settings
        + archiver
        + "\n"
        + _window_markdown(report),
    )
    result = {"config": config, "archive": report.model_dump(mode="json"), "problems": problems}
    if require and problems:
        pitr.require_archiving({"problems": problems})
    return result


@task(task_run_name="pitr-recover", cache_policy=NO_CACHE)
def recover_task(target, manifest, store, goal, options) -> dict[str, Any]:
    return pitr.recover(target, manifest, store, goal, options)


@flow(name="pitr-postgres")
def pitr_postgres(
    target_time: TargetTime | None,
    directory: str | None = None,
    target: PitrRef = None,
    store: StoreRef = None,
    target_lsn: str | None = None,
    target_name: str | None = None,
    backup_id: str | None = None,
    port: int | None = None,
    os_user: str = "postgres",
) -> dict[str, Any]:
    """Recover PostgreSQL to `target_time` (with zone, or 'latest'; or give target_lsn /
    target_name instead) into a NEW instance in `directory` (default: a new folder under
    $KLB_PITR_DIR), on a loopback port, archiving off, paused at the target. The source is never
    touched. Promote it with promote_pitr.

    Args:
        target_time: The point in time to recover to, with a timezone (ISO 8601, e.g.
            2026-01-01T10:30:00+00:00), or 'latest'; empty when target_lsn or target_name is given.
        directory: Directory for the new, recovered instance (must not exist yet); empty: a new
            folder under $KLB_PITR_DIR.
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
        target_lsn: Recover up to this WAL location instead of a time (e.g. 0/3000060).
        target_name: Recover up to this named restore point (pg_create_restore_point) instead of a
            time.
        backup_id: Which base backup to start from: empty or 'latest' (the newest that reaches the
            target) or a postgres-pitr id as listed by `klb backups list postgres-pitr`, e.g.
            postgres-pitr-20260101T020000Z-a1b2c3.
        port: Port the recovered PostgreSQL instance listens on.
        os_user: Operating-system user that runs the recovered PostgreSQL (postgres refuses to run
            as root).
    """
    logger = get_run_logger()
    goal = parse_target(target_time, target_lsn, target_name)  # bad input fails before anything runs
    directory = directory or pitr.default_directory(goal)
    given = {"directory": directory, "port": port, "os_user": os_user}
    options = restore_options("postgres-pitr", given)  # BadInput (port out of range), not pydantic's
    target_block, store_block = _target(target), load_store(store)
    report, window, ref = pitr.plan(target_block, store_block, goal, backup_id)
    manifest = get_backup(store_block, ref.id, "postgres-pitr")
    lead = ""
    if goal.kind == "time":
        lead = f" ({(goal.time - ref.end_time).total_seconds():.0f} s of WAL to replay after it)"
    create_markdown_artifact(
        key="pitr-postgres-plan",
        markdown=f"# PITR plan: {goal.describe()}\n\nBase backup `{ref.id}` ended {ref.end_time.isoformat()}"
        f" (LSN {ref.stop_lsn}){lead}.\nNew instance: `{directory}` on 127.0.0.1, archive_mode=off.\n\n"
        + _window_markdown(report),
    )
    logger.info("PITR to %s from base backup %s into %s", goal.describe(), ref.id, directory)
    result = recover_task(target_block, manifest, store_block, goal, options)
    create_markdown_artifact(
        key="pitr-postgres-result",
        markdown=fields_table(f"PITR to {goal.describe()}: verified", result)
        + f"\nNext: inspect it on 127.0.0.1:{result['port']}, then `promote_pitr('{directory}')` "
        "(or stop it). Cut applications over only after promotion.",
    )
    return {**result, "window": window.model_dump(mode="json"), "archive": report.model_dump(mode="json")}


@flow(name="promote-pitr")
def promote_pitr(directory: str, target: PitrRef = None) -> dict[str, Any]:
    """The explicit cut-over step: end recovery on a PITR instance paused at its target.

    Args:
        directory: Directory of the PITR instance to promote (the `directory` of its pitr-postgres run).
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
    """
    result = pitr.promote(_target(target), directory)
    create_markdown_artifact(
        key="pitr-promote",
        markdown=fields_table("PITR instance promoted", result),
    )
    return result


@flow(name="pitr-kubernetes")
def pitr_kubernetes(
    target_time: TargetTime,
    target: VeleroRef = None,
    store: StoreRef = None,
    options: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Restore the newest Kubernetes (Velero) backup taken at or before `target_time`.
    Kubernetes has no WAL: the plan says how far before the target that backup is.

    Args:
        target_time: The point in time to recover to, with a timezone (ISO 8601, e.g.
            2026-01-01T10:30:00+00:00).
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
        options: Restore options of the component (its RestoreOptions fields, docs/components.md),
            e.g. {"namespaces": ["lambda"], "existing_resource_policy": "update"} for kubernetes.
        dry_run: True: only show what would be done; False: do it.
    """
    goal = parse_target(target_time)
    if goal.kind != "time":
        raise BadInput("pitr_kubernetes needs a time with zone")
    restore_options("kubernetes", options)  # a typo fails the dry run too, not only the real one
    store_block = load_store(store)
    try:  # the target says what 'the whole component' is: a narrower backup is never the pick
        target_block = load_target("kubernetes", target)
        manifest = backup_for(store_block, LATEST, "kubernetes", target_block, options, at=goal.time)
        unchecked = None
    except ConfigurationError as exc:
        if not dry_run:
            raise
        # a plan without a target still shows the newest backup, saying its scope is unchecked
        target_block, manifest = None, backup_at_or_before(store_block, "kubernetes", goal.time)
        unchecked = f"no target to compare its scope with ({exc})"
    gap = (goal.time - manifest.source_time).total_seconds()
    plan = {
        "target_time": goal.time.isoformat(),
        "backup_id": manifest.id,
        "backup_source_time": manifest.source_time.isoformat(),
        "seconds_before_target": gap,
        "dry_run": dry_run,
        **({"scope_unchecked": unchecked} if unchecked else {}),
    }
    create_markdown_artifact(
        key="pitr-kubernetes-plan",
        markdown=f"# Kubernetes PITR plan\n\nNewest backup at or before {goal.time.isoformat()}: "
        f"`{manifest.id}` taken {manifest.source_time.isoformat()}, **{gap:.0f} s before the target**: "
        "changes after it are not restored.\n",
    )
    if dry_run:
        return plan
    from flows.restore import restore_component

    report = restore_component(
        "kubernetes", backup_id=manifest.id, target=target_block, store=store_block, options=options
    )
    # restore_component left the restore record (`restore_id`): a rollback of an earlier
    # checklist restore into this cluster sees it
    return {
        **plan,
        "restore": report,
        "restore_id": report["restore_id"],
        "finished_at": datetime.now(UTC).isoformat(),
    }
