"""Base backups: pg_basebackup -D - -Ft -X fetch over TCP, streamed into the store.

Its manifest records start/stop LSN, timeline and times; `plan` picks the base backup and the
stretch of archived WAL that reach a recovery target.
"""

from __future__ import annotations

import json
from typing import Any

from blocks.pitr import PitrTarget
from blocks.store import StoreBlock
from tasks.components.contract import target_from_env
from tasks.components.postgres.common import engine_env
from tasks.components.postgres_pitr.checks import BASE_OBJECT, check_archive, check_contents, parse_label
from tasks.components.postgres_pitr.engines import (
    engine_for,
    parse_lsn,
    segment_name,
    segment_of,
)
from tasks.components.postgres_pitr.server import _row, check_config, connect, pg_bindir, require_archiving
from tasks.components.postgres_pitr.tar import TarPeek
from tasks.components.postgres_pitr.targets import RecoveryTarget
from tasks.components.postgres_pitr.window import (
    COMPONENT,
    ArchiveReport,
    BaseBackupRef,
    Window,
    archive_report,
    base_backup_refs,
    choose_base_backup,
)
from tasks.errors import BadInput, ConfigurationError, IntegrityError
from tasks.ids import parse_backup_id
from tasks.models import Manifest
from tasks.proc import stream_stdout
from tasks.storage.catalog import LATEST, list_backups
from tasks.storage.health import damaged_ids


def check_wal_lock(target: PitrTarget, store: StoreBlock) -> None:
    """A locked store's base backups need a locked WAL archive (object_lock.check_wal_archive).
    Two requests to the archive bucket, with the target's archive credentials."""
    from tasks.storage import object_lock
    from tasks.storage.backends.s3_lock import bucket_lock

    if not object_lock.lock_mode(store):
        return
    import boto3

    keys = {}
    if target.aws_access_key_id and target.aws_secret_access_key:
        keys = {
            "aws_access_key_id": target.aws_access_key_id.get_secret_value(),
            "aws_secret_access_key": target.aws_secret_access_key.get_secret_value(),
        }
    client = boto3.client("s3", endpoint_url=target.endpoint_url, region_name=target.region, **keys)
    bucket = target.archive_url.removeprefix("s3://").split("/", 1)[0]
    retention = object_lock.table_retention(COMPONENT)
    if retention is not None:
        object_lock.check_wal_archive(bucket_lock(client, bucket), retention, COMPONENT)


def backup(target: PitrTarget, session) -> None:
    check_wal_lock(target, session.store)  # before pg_basebackup: refuse, having changed nothing
    config = check_config(target)
    require_archiving(config)  # a base backup without its WAL archive recovers nothing after it
    with connect(target) as conn:
        begin_time = _row(conn, "select now()")[0]
    peek = TarPeek({"backup_label", "backup_manifest"})
    argv = [
        str(pg_bindir() / "pg_basebackup"),
        "--pgdata=-",
        "--format=tar",
        "--wal-method=fetch",
        "--checkpoint=fast",
        f"--label={session.id}",
        "--no-password",
    ]
    # the password reaches pg_basebackup in a private password file, as for pg_dump
    with (
        engine_env(target) as env,
        stream_stdout(argv, env=env, timeout=24 * 3600, name="pg_basebackup") as out,
    ):
        session.write(BASE_OBJECT, peek.tee(out), meta={"format": "tar", "wal": "fetch"})
    if problem := peek.problem():  # no manifest is written: the stored bytes are a leftover
        raise IntegrityError(f"pg_basebackup's output is not a readable tar ({problem}): no backup made")
    if "backup_label" not in peek.found:
        raise IntegrityError("the base backup has no backup_label: it cannot be recovered")
    label = parse_label(peek.found["backup_label"].decode())
    stop_lsn = None
    if "backup_manifest" in peek.found:
        ranges = json.loads(peek.found["backup_manifest"])["WAL-Ranges"]
        stop_lsn = ranges[-1]["End-LSN"]
    with connect(target) as conn:
        # server clock, after pg_basebackup returned: at or after the consistent point (conservative)
        end_time, lsn_now = _row(conn, "select now(), pg_current_wal_lsn()::text")
    stop_lsn = stop_lsn or lsn_now
    seg = config["wal_segment_size"]
    session.source_time = end_time
    session.engine.update(
        {
            "engine": "pg_basebackup+barman-cloud",
            "server_version_num": config["server_version_num"],
            "system_identifier": config["system_identifier"],
            "wal_segment_size": seg,
            "timeline": label["timeline"],
            "start_lsn": label["start_lsn"],
            "stop_lsn": stop_lsn,
            "begin_time": begin_time.isoformat(),
            "end_time": end_time.isoformat(),
            "first_segment": label["start_segment"],
            "last_segment": segment_name(label["timeline"], segment_of(parse_lsn(stop_lsn), seg), seg),
            "archive_url": target.archive_url,
            "server_name": target.server_name,
            "pg_manifest": "backup_manifest" in peek.found,
        }
    )


def verify(target: PitrTarget | None, manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
    """A base backup a recovery can start from (checks.py). The archive is asked with the
    target given, else the default one ($KLB_PITR_TARGET); without either it is not checked."""
    report = check_contents(manifest, store)
    if target is None:
        try:
            target = target_from_env(PitrTarget, "PITR", "KLB_PITR_TARGET")  # type: ignore[assignment]
        except ConfigurationError as exc:
            report["archive"] = f"not checked: {exc}"
    if target is not None:
        report["archive"] = check_archive(target, manifest)
    e = manifest.engine
    return {"start_lsn": e["start_lsn"], "stop_lsn": e["stop_lsn"], "timeline": e["timeline"], **report}


def catalog_backups(store: StoreBlock, target: PitrTarget) -> list[Manifest]:
    """This server's base backups, without those found damaged (a read or the sweep recorded
    it): a window never starts at one, and no recovery picks it."""
    damaged = damaged_ids(store, COMPONENT)
    return [
        m for m in list_backups(store, COMPONENT) if m.id not in damaged and base_backup_refs([m], target)
    ]


def wal_archive(target: PitrTarget, store: StoreBlock, engine_name: str = "barman-cloud") -> ArchiveReport:
    backups = catalog_backups(store, target)
    seg = backups[-1].engine["wal_segment_size"] if backups else 16 * 1024 * 1024
    major = backups[-1].engine["server_version_num"] // 10000 if backups else None
    return archive_report(engine_for(engine_name), target, backups, seg, pg_bindir(major))


def plan(
    target: PitrTarget, store: StoreBlock, goal: RecoveryTarget, backup_id: str | None = None
) -> tuple[ArchiveReport, Window, BaseBackupRef]:
    if backup_id == LATEST:  # what the form offers: the newest base backup that reaches the target
        backup_id = None
    if backup_id and parse_backup_id(backup_id)[0] != COMPONENT:
        raise BadInput(
            f"{backup_id} is a {parse_backup_id(backup_id)[0]} backup: PITR starts from a postgres-pitr "
            "base backup (klb backups list postgres-pitr), or leave backup_id empty; nothing was changed"
        )
    if backup_id and (why := damaged_ids(store, COMPONENT).get(backup_id)):
        raise IntegrityError(
            f"base backup {backup_id} is recorded damaged ({why[:300]}): leave backup_id empty (the "
            "flow picks a sound base backup that reaches the target) or choose another. Nothing was changed."
        )
    report = wal_archive(target, store)
    explicit = None
    if backup_id:
        # an explicit base backup: refuse a target before its end (barman would silently ignore it)
        found = [b for w in report.windows for b in w.base_backups if b.id == backup_id]
        if not found:
            raise BadInput(f"base backup {backup_id} is not in a recoverable window: {report.describe()}")
        explicit = found[0]
        if (goal.kind == "time" and goal.time < explicit.end_time) or (
            goal.kind == "lsn" and parse_lsn(goal.lsn) < parse_lsn(explicit.stop_lsn)
        ):
            raise BadInput(
                f"target {goal.describe()} is before the end of base backup {explicit.id} "
                f"({explicit.end_time.isoformat()}, LSN {explicit.stop_lsn}): choose an earlier backup "
                "or let the flow choose. Nothing was changed."
            )
    window, ref = choose_base_backup(report, goal)  # the target must be inside a window
    if explicit is not None:
        if explicit not in window.base_backups:
            raise BadInput(
                f"base backup {explicit.id} cannot reach {goal.describe()}: it is in another stretch of "
                f"archived WAL ({report.describe()}). Nothing was changed."
            )
        ref = explicit
    return report, window, ref
