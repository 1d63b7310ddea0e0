"""Component "postgres-pitr": physical base backups + barman-cloud's WAL archive -> PITR.

backup()   pg_basebackup -D - -Ft -X fetch over TCP, streamed into the store (no PGDATA access:
           it runs from a Kubernetes Job); its manifest records start/stop LSN, timeline, times.
recover()  a NEW data directory, started on its own loopback port with archive_mode=off and
           recovery_target_action=pause; verified; promotion is the separate promote() step.
The WAL archive itself is written by the server's archive_command (docs/pitr.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from blocks.pitr import PitrTarget
from blocks.store import StoreBlock
from tasks.components.contract import target_from_env
from tasks.components.postgres_pitr.backups import (
    BASE_OBJECT,
    backup,
    catalog_backups,
    plan,
    verify,
    wal_archive,
)
from tasks.components.postgres_pitr.engines import format_lsn, parse_lsn
from tasks.components.postgres_pitr.instance import STATE_FILE, promote, stop_instance
from tasks.components.postgres_pitr.recover import (
    DEFAULT_PITR_ROOT,
    NOT_REACHED,
    RestoreOptions,
    check_directory,
    default_directory,
    free_port,
    recover,
)
from tasks.components.postgres_pitr.server import check_config, connect, pg_bindir, require_archiving
from tasks.components.postgres_pitr.targets import RecoveryTarget, parse_target
from tasks.models import Manifest
from tasks.timing import rounded, timed

Target = PitrTarget


def default_target() -> PitrTarget:
    return target_from_env(
        PitrTarget, "PITR", "KLB_PITR_TARGET", hint="docs/pitr.md has the archive settings"
    )  # type: ignore[return-value]


def goal_of(options: RestoreOptions) -> RecoveryTarget:
    """The recovery target the options name ('latest' when they name none)."""
    when = options.target_time or (None if options.target_lsn or options.target_name else "latest")
    return parse_target(when, options.target_lsn, options.target_name)


def check_restore(target: PitrTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions) -> None:
    """Before a checklist or approval: the target (with a zone, not in the future, inside the
    recoverable window and reachable from this base backup) and a new directory."""
    goal = goal_of(options)
    check_directory(options.directory)
    plan(target, store, goal, backup_id=manifest.id)


def writes_target(options: RestoreOptions) -> bool:
    """A recovery makes a new instance; the source server is never written to."""
    return False


def base_backup_for(target: PitrTarget, store: StoreBlock, options: RestoreOptions) -> str:
    """What 'latest' means for a PITR: the newest base backup from which the options' target
    is reachable (the newest of all may end after a time target; the restore then refused)."""
    return plan(target, store, goal_of(options))[2].id


def restore(
    target: PitrTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    goal = goal_of(options)
    planned: dict[str, float] = {}
    with timed(planned, "plan"):  # the window asked of the archive
        plan(target, store, goal, backup_id=manifest.id)
    report = recover(target, manifest, store, goal, options)
    report["seconds"] = {**rounded(planned), **report["seconds"]}
    return report


def drill(target: PitrTarget, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict[str, Any]:
    """Recover `manifest` + all archived WAL into a throwaway instance, verify, always remove it."""
    base = os.environ.get("KLB_PITR_DIR") or DEFAULT_PITR_ROOT
    directory = str(Path(base) / f"drill-{drill_id}")
    removed: dict[str, float] = {}
    try:
        report = restore(target, manifest, store, RestoreOptions(directory=directory))
    finally:
        with timed(removed, "stop+remove"):
            if Path(directory, STATE_FILE).exists():
                stop_instance(directory)
            shutil.rmtree(directory, ignore_errors=True)
    report["seconds"].update(rounded(removed))
    return {"verified": True, "checks": report}


def drill_cleanup(target: PitrTarget, drill_id: str) -> None:
    """Stop and remove the drill's throwaway instance, if a crashed drill left it."""
    directory = Path(os.environ.get("KLB_PITR_DIR") or DEFAULT_PITR_ROOT) / f"drill-{drill_id}"
    if Path(directory, STATE_FILE).exists():
        stop_instance(str(directory))
    shutil.rmtree(directory, ignore_errors=True)


# Moves on by itself on any live archiving server (autovacuum, checkpoints, archive_timeout):
# not a sign that a drill touched production. The drill's recovered instance runs with
# archive_mode=off, so it cannot change the archive; a broken archive still shows in `problems`.
_MOVING = ("archiver", "current_wal")


def describe_current_state(target: PitrTarget) -> dict[str, Any]:
    """The server's archiving configuration and identity (check_config without its counters)."""
    return {k: v for k, v in check_config(target).items() if k not in _MOVING}


__all__ = [
    "BASE_OBJECT",
    "DEFAULT_PITR_ROOT",
    "NOT_REACHED",
    "STATE_FILE",
    "RestoreOptions",
    "Target",
    "backup",
    "base_backup_for",
    "catalog_backups",
    "check_config",
    "check_restore",
    "connect",
    "default_directory",
    "default_target",
    "describe_current_state",
    "drill",
    "drill_cleanup",
    "format_lsn",
    "free_port",
    "goal_of",
    "parse_lsn",
    "parse_target",
    "pg_bindir",
    "plan",
    "promote",
    "recover",
    "require_archiving",
    "restore",
    "stop_instance",
    "verify",
    "wal_archive",
    "writes_target",
]
