"""Component "postgres-pitr": physical base backups + barman-cloud's WAL archive -> PITR.

backup()   pg_basebackup -D - -Ft -X fetch over TCP, streamed into the store (no PGDATA access:
           it runs from a Kubernetes Job); its manifest records start/stop LSN, timeline, times.
recover()  a NEW data directory, started on its own loopback port with archive_mode=off and
           recovery_target_action=pause; verified; promotion is the separate promote() step.
The WAL archive itself is written by the server's archive_command (docs/pitr.md).
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import json
import logging
import os
import re
import shutil
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from pydantic import Field

from blocks.pitr import PitrTarget
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions
from tasks.components.postgres_pitr.engines import (
    engine_for,
    format_lsn,
    parse_lsn,
    segment_name,
    segment_of,
    write_credentials_file,
)
from tasks.components.postgres_pitr.tar import TarPeek
from tasks.components.postgres_pitr.window import (
    COMPONENT,
    ArchiveReport,
    BaseBackupRef,
    RecoveryTarget,
    Window,
    archive_report,
    base_backup_refs,
    choose_base_backup,
    parse_target,
)
from tasks.errors import BadInput, ComponentFailed, ConfigurationError, IntegrityError, TransientError
from tasks.models import Manifest
from tasks.proc import feed_stdin, run, stream_stdout
from tasks.storage.catalog import list_backups
from tasks.storage.session import read_object

Target = PitrTarget
log_ = logging.getLogger(__name__)
BASE_OBJECT = "base.tar"
STATE_FILE = "pitr.json"
NOT_REACHED = "recovery ended before configured recovery target was reached"


def default_target() -> PitrTarget:
    ref = os.environ.get("KLB_PITR_TARGET")
    if ref:
        return PitrTarget.load(ref)
    raise ConfigurationError(
        "no PITR target: create a 'klb-pitr-target' block (docs/pitr.md) and pass its name, "
        "or set KLB_PITR_TARGET"
    )


# ---- PostgreSQL binaries and connections ----------------------------------------------------


def pg_bindir(major: int | None = None) -> Path:
    """Server binaries of `major` (restore must match the backup), or the newest (client tools)."""
    if os.environ.get("KLB_PG_BINDIR"):
        return Path(os.environ["KLB_PG_BINDIR"])
    pattern = f"/usr/lib/postgresql/{major}/bin/pg_ctl" if major else "/usr/lib/postgresql/*/bin/pg_ctl"
    found = sorted(glob.glob(pattern), key=lambda p: int(p.split("/")[4]))
    if not found:
        want = f"PostgreSQL {major} server binaries" if major else "PostgreSQL binaries"
        raise ConfigurationError(f"{want} are not installed: apt-get install postgresql-{major or ''}")
    return Path(found[-1]).parent


def connect(target: PitrTarget, host: str | None = None, port: int | None = None) -> psycopg.Connection:
    try:
        return psycopg.connect(
            host=host or target.host,
            port=port or target.port,
            user=target.user,
            password=target.password.get_secret_value() if target.password else None,
            dbname=target.database,
            connect_timeout=10,
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        if "starting up" in str(exc) or "shutting down" in str(exc):
            raise TransientError(
                f"PostgreSQL at {host or target.host}:{port or target.port} is restarting"
            ) from None
        raise ConfigurationError(
            f"cannot connect to PostgreSQL at {host or target.host}:{port or target.port} as "
            f"{target.user}: {str(exc).strip().splitlines()[0]}"
        ) from None


def _row(conn: psycopg.Connection, sql: str) -> tuple:
    return conn.execute(sql).fetchone()


# ---- configuration check --------------------------------------------------------------------

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


# ---- backup ---------------------------------------------------------------------------------


def _label(text: str) -> dict[str, Any]:
    start = re.search(r"START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)", text)
    tli = re.search(r"START TIMELINE: (\d+)", text)
    if not start or not tli:
        raise IntegrityError("pg_basebackup's backup_label is not readable: the base backup is unusable")
    return {"start_lsn": start[1], "start_segment": start[2], "timeline": int(tli[1])}


def backup(target: PitrTarget, session) -> None:
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
    with stream_stdout(argv, env=target.pg_env(), timeout=24 * 3600, name="pg_basebackup") as out:
        session.write(BASE_OBJECT, peek.tee(out), meta={"format": "tar", "wal": "fetch"})
    if "backup_label" not in peek.found:
        raise IntegrityError("the base backup has no backup_label: it cannot be recovered")
    label = _label(peek.found["backup_label"].decode())
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
    e = manifest.engine
    missing = [k for k in ("start_lsn", "stop_lsn", "timeline", "end_time", "archive_url") if k not in e]
    if missing:
        raise IntegrityError(f"base backup {manifest.id} lacks {missing} in its manifest")
    manifest.object(BASE_OBJECT)
    return {"start_lsn": e["start_lsn"], "stop_lsn": e["stop_lsn"], "timeline": e["timeline"]}


# ---- window ---------------------------------------------------------------------------------


def catalog_backups(store: StoreBlock, target: PitrTarget) -> list[Manifest]:
    return [m for m in list_backups(store, COMPONENT) if base_backup_refs([m], target)]


def wal_archive(target: PitrTarget, store: StoreBlock, engine_name: str = "barman-cloud") -> ArchiveReport:
    backups = catalog_backups(store, target)
    seg = backups[-1].engine["wal_segment_size"] if backups else 16 * 1024 * 1024
    major = backups[-1].engine["server_version_num"] // 10000 if backups else None
    return archive_report(engine_for(engine_name), target, backups, seg, pg_bindir(major))


def plan(
    target: PitrTarget, store: StoreBlock, goal: RecoveryTarget, backup_id: str | None = None
) -> tuple[ArchiveReport, Window, BaseBackupRef]:
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


# ---- recovery into a new instance -----------------------------------------------------------


class RestoreOptions(StrictOptions):
    directory: str = Field(description="NEW directory for the recovered instance (absent or empty)")
    target_time: datetime | str | None = Field(default=None, description="aware time or 'latest' (default)")
    target_lsn: str | None = None
    target_name: str | None = None
    port: int | None = Field(
        default=None, ge=1024, le=65535, description="loopback port; default: a free one"
    )
    os_user: str = Field(default="postgres", description="OS user that owns and runs the instance (as root)")
    timeout_seconds: float = Field(default=3600, gt=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user(user: str) -> list[str]:
    if os.geteuid() == 0 and user != getpass.getuser():
        return ["runuser", "-u", user, "--"]
    return []


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


DEFAULT_PITR_ROOT = "/var/lib/knative-lambda-backup/pitr"


def default_directory(goal: RecoveryTarget) -> str:
    """$KLB_PITR_DIR (or /var/lib/knative-lambda-backup/pitr)/pitr-<now>-<rand>: always new."""
    from tasks.ids import new_backup_id

    base = os.environ.get("KLB_PITR_DIR") or DEFAULT_PITR_ROOT
    return str(Path(base) / new_backup_id("pitr"))


def _prepare_directory(path: str, user: str) -> Path:
    root = Path(path)
    if not root.is_absolute():
        raise BadInput(f"directory {path!r} must be an absolute path")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise BadInput(f"directory {path} exists and is not empty: PITR only restores into a new directory")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / "data").mkdir(mode=0o700)
    (root / "socket").mkdir(mode=0o700)
    if _as_user(user):
        for p in (root, root / "data", root / "socket"):
            shutil.chown(p, user)
    return root


def _recovery_settings(goal: RecoveryTarget, restore_command: str, port: int, sock: Path) -> dict[str, str]:
    conf = {
        "port": str(port),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": _conf_quote(str(sock)),
        "archive_mode": "'off'",  # it must never write into the production archive
        "logging_collector": "off",
        "hot_standby": "on",
        "primary_conninfo": "''",
        "restore_command": _conf_quote(restore_command),
        "recovery_target_timeline": "'current'",
    }
    if goal.kind != "latest":
        conf["recovery_target_action"] = "'pause'"  # promotion is promote(), an explicit step
        conf["recovery_target_inclusive"] = "on"
    if goal.kind == "time":
        conf["recovery_target_time"] = _conf_quote(goal.time.isoformat())
    elif goal.kind == "lsn":
        conf["recovery_target_lsn"] = _conf_quote(goal.lsn)
    elif goal.kind == "name":
        conf["recovery_target_name"] = _conf_quote(goal.name)
    return conf


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _running(bindir: Path, data: Path, user: str) -> bool:
    try:
        run([*_as_user(user), str(bindir / "pg_ctl"), "status", "-D", str(data)], timeout=30)
        return True
    except ComponentFailed:
        return False


def _raise_if_not_reached(goal: RecoveryTarget, log: Path) -> None:
    if NOT_REACHED in log.read_text(errors="replace"):
        raise ComponentFailed(
            f"PITR to {goal.describe()} failed: the server says '{NOT_REACHED}' (the archived WAL "
            "ends before the target). The new instance was removed; the source was not touched.\n"
            + _log_tail(log)
        )


def _wait_for_target(target, goal, port, bindir, data, log, user, timeout) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _raise_if_not_reached(goal, log)
        if not _running(bindir, data, user):
            _raise_if_not_reached(goal, log)
            raise ComponentFailed(f"the recovering server stopped:\n{_log_tail(log)}")
        try:
            with connect(target, "127.0.0.1", port) as conn:
                in_recovery, pause = _row(
                    conn,
                    "select pg_is_in_recovery(), "
                    "case when pg_is_in_recovery() then pg_get_wal_replay_pause_state() end",
                )
                if (goal.kind == "latest" and not in_recovery) or (
                    goal.kind != "latest" and pause == "paused"
                ):
                    return _state(conn)
        except (ConfigurationError, TransientError):
            pass  # shutting down or not accepting yet: the checks above decide
        time.sleep(0.3)
    raise ComponentFailed(f"recovery did not reach {goal.describe()} within {timeout}s:\n{_log_tail(log)}")


def _state(conn: psycopg.Connection) -> dict[str, Any]:
    in_recovery, replay_ts, replay_lsn, dbs = _row(
        conn,
        "select pg_is_in_recovery(), pg_last_xact_replay_timestamp(), pg_last_wal_replay_lsn()::text, "
        "(select array_agg(datname order by datname) from pg_database where not datistemplate)",
    )
    return {
        "in_recovery": in_recovery,
        "recovered_to_time": replay_ts.astimezone(UTC).isoformat() if replay_ts else None,
        "replayed_lsn": replay_lsn,
        "databases": dbs,
    }


def recover(
    target: PitrTarget,
    manifest: Manifest,
    store: StoreBlock,
    goal: RecoveryTarget,
    options: RestoreOptions,
    engine_name: str = "barman-cloud",
) -> dict[str, Any]:
    """Base backup -> new directory -> replay archived WAL to `goal` -> verify. Source untouched."""
    engine = engine_for(engine_name)
    major = manifest.engine["server_version_num"] // 10000
    bindir = pg_bindir(major)
    user = options.os_user
    port = options.port or free_port()
    root = _prepare_directory(options.directory, user)
    data, sock, log, creds = root / "data", root / "socket", root / "server.log", root / "aws-credentials"
    as_user = _as_user(user)
    started = False
    try:
        # the stream is checked (sha256) at its end, before anything is started from it
        feed_stdin(
            [*as_user, "tar", "-x", "-f", "-", "-C", str(data)],
            read_object(store, manifest.object(BASE_OBJECT)),
            timeout=options.timeout_seconds,
            name="tar",
        )
        if manifest.engine.get("pg_manifest"):
            run([*as_user, str(bindir / "pg_verifybackup"), str(data)], timeout=options.timeout_seconds)
        write_credentials_file(target, creds, user if as_user else None)
        settings = _recovery_settings(goal, engine.restore_command(target, creds), port, sock)
        if not (data / "postgresql.conf").exists():  # Debian keeps it in /etc: the data dir has none
            (data / "postgresql.conf").touch()
        with open(data / "postgresql.auto.conf", "a") as fh:
            fh.write("\n# knative-lambda-backup PITR: new instance, archiving off\n")
            fh.writelines(f"{k} = {v}\n" for k, v in settings.items())
        (data / "standby.signal").unlink(missing_ok=True)
        (data / "recovery.signal").touch()
        log.touch()
        if as_user:
            for p in (data / "postgresql.conf", data / "postgresql.auto.conf", data / "recovery.signal", log):
                shutil.chown(p, user)
        state_file = {
            "backup_id": manifest.id,
            "goal": goal.model_dump(mode="json"),
            "port": port,
            "bindir": str(bindir),
            "os_user": user,
        }
        (root / STATE_FILE).write_text(json.dumps(state_file, indent=2))
        started = True
        try:
            run(
                [
                    *as_user,
                    str(bindir / "pg_ctl"),
                    "start",
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "600",
                ],
                timeout=700,
                name="pg_ctl start",
            )
        except ComponentFailed:
            _raise_if_not_reached(goal, log)
            raise
        # pg_ctl -w returns 0 once read-only connections work: the outcome is checked here
        state = _wait_for_target(target, goal, port, bindir, data, log, user, options.timeout_seconds)
        text = log.read_text(errors="replace")
        stop = re.findall(r"recovery stopping [^\n]*", text)
        if goal.kind != "latest" and not stop:
            raise IntegrityError(
                f"recovery paused but the log shows no 'recovery stopping' line:\n{_log_tail(log)}"
            )
        recovered = state["recovered_to_time"]
        if goal.kind == "time" and recovered and datetime.fromisoformat(recovered) > goal.time:
            raise IntegrityError(
                f"recovered to {state['recovered_to_time']}, after the target {goal.time.isoformat()}"
            )
    except BaseException:
        tail = _log_tail(log)
        if started:
            stop_instance(str(root))
        shutil.rmtree(root, ignore_errors=True)
        if tail and tail != "(no server log)":
            log_.error("PITR instance log before cleanup:\n%s", tail)
        raise
    return {
        "goal": goal.describe(),
        "base_backup": manifest.id,
        "directory": str(root),
        "data_directory": str(data),
        "port": port,
        "host": "127.0.0.1",
        "stopped_at": stop[-1] if stop else "end of archived WAL",
        "paused_for_promotion": goal.kind != "latest",
        **state,
    }


def _load_state(directory: str) -> tuple[Path, dict[str, Any]]:
    root = Path(directory)
    try:
        return root, json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise BadInput(f"{directory} is not a PITR instance directory (no {STATE_FILE})") from None


def promote(target: PitrTarget, directory: str) -> dict[str, Any]:
    """End recovery on a PITR instance paused at its target: it becomes writable (new timeline)."""
    root, st = _load_state(directory)
    with connect(target, "127.0.0.1", st["port"]) as conn:
        if not _row(conn, "select pg_is_in_recovery()")[0]:
            raise BadInput(f"the instance in {directory} is already promoted")
        if not _row(conn, "select pg_promote(true, 300)")[0]:
            raise ComponentFailed(f"promotion of {directory} did not finish in 300 s")
        state = _state(conn)
        # the control file's timeline waits for the next checkpoint; the WAL file name does not
        state["timeline"] = int(_row(conn, "select pg_walfile_name(pg_current_wal_lsn())")[0][:8], 16)
    (root / "aws-credentials").unlink(missing_ok=True)  # no more WAL to fetch
    return {"directory": str(root), "port": st["port"], "promoted": not state["in_recovery"], **state}


def stop_instance(directory: str) -> None:
    root, st = _load_state(directory)
    data = root / "data"
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(ComponentFailed):  # already stopped
            run(
                [
                    *_as_user(st["os_user"]),
                    str(Path(st["bindir"]) / "pg_ctl"),
                    "stop",
                    "-D",
                    str(data),
                    "-m",
                    "fast",
                    "-w",
                ],
                timeout=120,
            )


# ---- the rest of the component contract -----------------------------------------------------


def restore(
    target: PitrTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    when = options.target_time or (None if options.target_lsn or options.target_name else "latest")
    goal = parse_target(when, options.target_lsn, options.target_name)
    plan(target, store, goal, backup_id=manifest.id)
    return recover(target, manifest, store, goal, options)


def drill(target: PitrTarget, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict[str, Any]:
    """Recover `manifest` + all archived WAL into a throwaway instance, verify, always remove it."""
    base = os.environ.get("KLB_PITR_DIR") or DEFAULT_PITR_ROOT
    directory = str(Path(base) / f"drill-{drill_id}")
    try:
        report = restore(target, manifest, store, RestoreOptions(directory=directory))
        return {"verified": True, "checks": report}
    finally:
        if Path(directory, STATE_FILE).exists():
            stop_instance(directory)
        shutil.rmtree(directory, ignore_errors=True)


def drill_cleanup(target: PitrTarget, drill_id: str) -> None:
    """Stop and remove the drill's throwaway instance, if a crashed drill left it."""
    directory = Path(os.environ.get("KLB_PITR_DIR") or DEFAULT_PITR_ROOT) / f"drill-{drill_id}"
    if Path(directory, STATE_FILE).exists():
        stop_instance(str(directory))
    shutil.rmtree(directory, ignore_errors=True)


def describe_current_state(target: PitrTarget) -> dict[str, Any]:
    return check_config(target)


__all__ = [
    "Target",
    "RestoreOptions",
    "backup",
    "verify",
    "restore",
    "describe_current_state",
    "drill",
    "check_config",
    "wal_archive",
    "plan",
    "recover",
    "promote",
    "stop_instance",
    "parse_target",
    "format_lsn",
]
