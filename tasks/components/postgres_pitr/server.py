"""The PostgreSQL server PITR reads from: its binaries, connections, and whether archiving works."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from blocks.pitr import PitrTarget
from tasks.components.postgres.common import connect as pg_connect
from tasks.errors import ConfigurationError
from tasks.proc import find_binary


def pg_bindir(major: int | None = None) -> Path:
    """Server binaries of `major` (restore must match the backup), or the newest (client tools)."""
    if os.environ.get("KLB_PG_BINDIR"):
        return Path(os.environ["KLB_PG_BINDIR"])
    want = f"PostgreSQL {major} server binaries" if major else "PostgreSQL binaries"
    pg_ctl = find_binary(
        "pg_ctl",
        [f"/usr/lib/postgresql/{major or '*'}/bin"],
        path=False,
        missing=f"{want} are not installed: apt-get install postgresql-{major or ''}",
    )
    return Path(pg_ctl).parent


def connect(target: PitrTarget, host: str | None = None, port: int | None = None) -> psycopg.Connection:
    """An autocommit connection to the target's `database`, or to the instance at `host`:`port`
    (a recovered instance: on loopback, without TLS, whatever sslmode production needs)."""
    if host is not None:
        target = target.model_copy(update={"sslmode": "prefer"})
    return pg_connect(target, target.database, autocommit=True, host=host, port=port)


def _row(conn: psycopg.Connection, sql: str) -> tuple:
    return conn.execute(sql).fetchone()


_SETTINGS = ("archive_mode", "archive_command", "archive_library", "archive_timeout", "wal_level")


def check_config(target: PitrTarget) -> dict[str, Any]:
    """What the server says about archiving, and every reason PITR would not work."""
    with connect(target) as conn:
        settings = {
            name: value
            for name, value in conn.execute(
                "select name, setting from pg_settings where name = any(%s)", [list(_SETTINGS)]
            ).fetchall()
        }
        arch = conn.execute(
            "select archived_count, last_archived_wal, last_archived_time, failed_count, "
            "last_failed_wal, last_failed_time from pg_stat_archiver"
        ).fetchone()
        version, seg_size, sysid = _row(
            conn,
            "select current_setting('server_version_num')::int,"
            " (select setting::int from pg_settings where name = 'wal_segment_size'),"  # bytes
            " (select system_identifier from pg_control_system())",
        )
        current_wal = _row(conn, "select pg_walfile_name(pg_current_wal_lsn())")[0]
    archiver = dict(
        zip(
            (
                "archived_count",
                "last_archived_wal",
                "last_archived_time",
                "failed_count",
                "last_failed_wal",
                "last_failed_time",
            ),
            arch,
            strict=True,
        )
    )
    problems: list[str] = []
    warnings: list[str] = []
    if settings.get("wal_level") == "minimal":
        problems.append("wal_level is minimal: set wal_level = replica and restart")
    if settings.get("archive_mode") == "off":
        problems.append("archive_mode is off: set archive_mode = on (docs/pitr.md) and restart")
    command = settings.get("archive_command", "")
    if not command or command == "(disabled)":
        if not settings.get("archive_library"):
            problems.append("archive_command is empty: set it to barman-cloud-wal-archive (docs/pitr.md)")
    elif target.server_name not in command or target.archive_url not in command:
        # an operator (CloudNativePG) may wrap the engine: report it, the window check decides
        warnings.append(
            f"archive_command does not archive to {target.archive_url} as server {target.server_name}: "
            f"it is {command!r}"
        )
    if archiver["last_failed_time"] and (
        not archiver["last_archived_time"] or archiver["last_failed_time"] > archiver["last_archived_time"]
    ):
        problems.append(
            f"archiving is failing: last failure {archiver['last_failed_wal']} at "
            f"{archiver['last_failed_time'].isoformat()} (see the server log)"
        )
    return {
        "settings": settings,
        "archiver": {k: v.isoformat() if isinstance(v, datetime) else v for k, v in archiver.items()},
        "current_wal": current_wal,
        "server_version_num": version,
        "wal_segment_size": seg_size,
        "system_identifier": str(sysid),
        "problems": problems,
        "warnings": warnings,
        "pitr_possible": not problems,
    }


def require_archiving(report: dict[str, Any]) -> None:
    if report["problems"]:
        raise ConfigurationError("PITR not possible: " + "; ".join(report["problems"]))
