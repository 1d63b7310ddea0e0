"""Recovery into a NEW data directory, started on its own loopback port with archive_mode=off and
recovery_target_action=pause; verified; promotion is the separate promote() step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from blocks.pitr import PitrTarget
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions
from tasks.components.postgres_pitr import files
from tasks.components.postgres_pitr.backups import BASE_OBJECT
from tasks.components.postgres_pitr.engines import (
    engine_for,
    is_segment,
    parse_lsn,
    segment_name,
    segment_number,
    server_env,
    write_credentials_file,
)
from tasks.components.postgres_pitr.hostconf import (
    check_libraries,
    drop_foreign_includes,
    host_settings,
    replace_missing_locales,
    write_auth_files,
)
from tasks.components.postgres_pitr.instance import (
    CREDENTIALS,
    STATE_FILE,
    as_user,
    instance_state,
    is_running,
    stop_instance,
)
from tasks.components.postgres_pitr.prefetch import planned_segments, restore_report, wal_spool
from tasks.components.postgres_pitr.server import _row, connect, pg_bindir
from tasks.components.postgres_pitr.settings import append_settings, recovery_settings, write_recovery_conf
from tasks.components.postgres_pitr.targets import RecoveryTarget, TargetTime
from tasks.errors import (
    BadInput,
    ComponentFailed,
    ConfigurationError,
    IntegrityError,
    NotFound,
    TransientError,
)
from tasks.models import Manifest
from tasks.proc import feed_stdin, free_port, run
from tasks.storage.session import read_object
from tasks.timing import rounded, timed

log_ = logging.getLogger(__name__)
NOT_REACHED = "recovery ended before configured recovery target was reached"


class RestoreOptions(StrictOptions):
    directory: str = Field(description="NEW directory for the recovered instance (absent or empty)")
    target_time: TargetTime | None = Field(
        default=None,
        description="aware time (text: 2026-01-15T14:30:00Z, never a number) or 'latest' (default)",
    )
    target_lsn: str | None = None
    target_name: str | None = None
    port: int | None = Field(
        default=None, ge=1024, le=65535, description="loopback port; default: a free one"
    )
    os_user: str = Field(default="postgres", description="OS user that owns and runs the instance (as root)")
    timeout_seconds: float = Field(default=3600, gt=0)
    shared_buffers: str = Field(
        default="128MB",
        pattern=r"^[1-9][0-9]*(kB|MB|GB)$",
        description="shared_buffers of the recovered instance, whatever the source's (a base backup "
        "carries production's, often more than the recovery pod's memory limit)",
    )


DEFAULT_PITR_ROOT = "/var/lib/knative-lambda-backup/pitr"


def default_directory(goal: RecoveryTarget) -> str:
    """$KLB_PITR_DIR (or /var/lib/knative-lambda-backup/pitr)/pitr-<now>-<rand>: always new."""
    from tasks.ids import new_backup_id

    base = os.environ.get("KLB_PITR_DIR") or DEFAULT_PITR_ROOT
    return str(Path(base) / new_backup_id("pitr"))


def check_directory(path: str) -> Path:
    """The recovered instance's directory: absolute, and new (absent or empty)."""
    root = Path(path)
    if not root.is_absolute():
        raise BadInput(f"directory {path!r} must be an absolute path")
    if root.is_symlink():
        raise BadInput(f"directory {path} is a symbolic link: give the directory it points to")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise BadInput(f"directory {path} exists and is not empty: PITR only restores into a new directory")
    return root


def _prepare_directory(path: str, user: str) -> Path:
    root = check_directory(path)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / "data").mkdir(mode=0o700)
    (root / "socket").mkdir(mode=0o700)
    if as_user(user):
        # the server's user gets its data and socket directories, not this one: what we write
        # here (credentials, settings, the restore script) is never where that user can put a link
        os.chown(root, os.geteuid(), os.getegid())
        root.chmod(0o711)
        for p in (root / "data", root / "socket"):
            shutil.chown(p, user)
    return root


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


BIND_TRIES = 3  # a free port may be taken by another process before the instance binds it


def _port_taken(log: Path) -> bool:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "could not bind" in text and "already in use" in text.lower()


def _raise_if_not_reached(goal: RecoveryTarget, log: Path) -> None:
    if NOT_REACHED not in log.read_text(errors="replace"):
        return
    if goal.kind == "name":
        # its place is unknown before replay: a name replay never met is not in this archive
        raise NotFound(
            f"restore point {goal.name!r} is not in the archived WAL: recovery replayed all of it from "
            "the base backup on and met no restore point of that name. Check the name (exact, case "
            "included, as given to pg_create_restore_point) or give target_lsn (what it returned) or "
            "target_time. The new instance was removed; the source was not touched."
        )
    raise ComponentFailed(
        f"PITR to {goal.describe()} failed: the server says '{NOT_REACHED}' (the archived WAL "
        "ends before the target). The new instance was removed; the source was not touched.\n"
        + _log_tail(log)
    )


def _wait_for_target(target, goal, port, bindir, data, log, user, timeout) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _raise_if_not_reached(goal, log)
        if not is_running(bindir, data, user):
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
                    return instance_state(conn)
        except (ConfigurationError, TransientError):
            pass  # shutting down or not accepting yet: the checks above decide
        time.sleep(0.3)
    raise ComponentFailed(f"recovery did not reach {goal.describe()} within {timeout}s:\n{_log_tail(log)}")


def _archive_end(wal: list[str], manifest: Manifest) -> tuple[int, list[int]] | None:
    """(last segment number, segment numbers) archived on the base backup's timeline."""
    seg, tli = manifest.engine["wal_segment_size"], manifest.engine["timeline"]
    named = (segment_number(name, seg) for name in wal if is_segment(name))
    numbers = [n for timeline, n in named if timeline == tli]
    return (max(numbers), numbers) if numbers else None


def _raise_if_short_of(
    end: tuple[int, list[int]] | None, manifest: Manifest, replayed: str, log: Path
) -> None:
    """'latest' ends where the server finds no next segment, and it then promotes itself: a
    segment it could not get (missing, an S3 error) ended it early, reporting nothing."""
    if end is None:
        return
    seg, tli = manifest.engine["wal_segment_size"], manifest.engine["timeline"]
    last, numbers = end
    if parse_lsn(replayed) > last * seg:  # past the start of the archive's last segment
        return
    held = set(numbers)
    missing = [segment_name(tli, n, seg) for n in range(parse_lsn(replayed) // seg, last) if n not in held]
    raise ComponentFailed(
        f"PITR to latest did not reach the end of the archived WAL: replay stopped at LSN {replayed}, but "
        f"the archive holds WAL up to segment {segment_name(tli, last, seg)}"
        + (f"; missing from it: {', '.join(missing[:5])}" if missing else " (a segment could not be fetched)")
        + ". The new instance was removed; the source was not touched. Check the archive "
        "(check_wal_archive), then recover again or to a target before the gap.\n" + _log_tail(log)
    )


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
    data, sock, log, creds = root / "data", root / "socket", root / "server.log", root / CREDENTIALS
    runas = as_user(user)
    started = False
    spool = contextlib.ExitStack()  # the WAL prefetcher, while recovery replays
    seconds: dict[str, float] = {}  # per phase: what a drill's RTO is made of
    try:
        # the stream is checked (sha256) at its end, before anything is started from it
        with timed(seconds, "fetch+untar"):
            feed_stdin(
                [*runas, "tar", "-x", "-f", "-", "-C", str(data)],
                read_object(store, manifest.object(BASE_OBJECT)),
                timeout=options.timeout_seconds,
                name="tar",
            )
        if manifest.engine.get("pg_manifest"):
            with timed(seconds, "verify"):
                run([*runas, str(bindir / "pg_verifybackup"), str(data)], timeout=options.timeout_seconds)
        preparing = time.monotonic()  # the instance's files, the WAL fetcher, the archive's end
        # after verification (it checks these files): the source host's files are not here
        warnings = drop_foreign_includes(data)
        write_auth_files(root, user if runas else None)
        write_credentials_file(target, creds, user if runas else None)
        command = spool.enter_context(
            wal_spool(
                engine, target, root, creds, manifest.engine.get("first_segment"), user if runas else None
            )
        )
        settings = recovery_settings(goal, command, port, sock, options.shared_buffers, major)
        write_recovery_conf(data, {**settings, **host_settings(root, major)})
        (data / "standby.signal").unlink(missing_ok=True)
        files.touch(data / "recovery.signal")
        files.touch(log)
        if runas:
            for p in (data / "postgresql.conf", data / "postgresql.auto.conf", data / "recovery.signal", log):
                files.give(p, user)
        warnings += replace_missing_locales(bindir, data, user)
        libraries, missing = check_libraries(bindir, data, user)
        append_settings(data, libraries)
        warnings += missing
        for warning in warnings:
            log_.warning("PITR instance: %s", warning)
        state_file = {
            "backup_id": manifest.id,
            "goal": goal.model_dump(mode="json"),
            "port": port,
            "bindir": str(bindir),
            "os_user": user,
        }
        (root / STATE_FILE).write_text(json.dumps(state_file, indent=2))
        end = None  # for 'latest': the fetcher's listing, taken just now, else one of our own
        if goal.kind == "latest":
            end = _archive_end(planned_segments(root) or engine.list_wal(target), manifest)
        seconds["prepare"] = time.monotonic() - preparing
        started = True
        replay = time.monotonic()  # start, WAL fetched ahead and replayed, the target reached
        for attempt in range(1, BIND_TRIES + 1):
            try:
                start = [*runas, str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(log)]
                run([*start, "-w", "-t", "600"], env=server_env(target), timeout=700, name="pg_ctl start")
                break
            except ComponentFailed:
                _raise_if_not_reached(goal, log)
                # a free port taken before the postmaster bound it: nothing ran yet (it binds
                # before recovery starts), so the same directory starts again on another port
                if options.port or attempt == BIND_TRIES or not _port_taken(log):
                    raise
                port = free_port()
                files.append_text(data / "postgresql.auto.conf", f"port = {port}\n")  # the last one wins
                (root / STATE_FILE).write_text(json.dumps({**state_file, "port": port}, indent=2))
        # pg_ctl -w returns 0 once read-only connections work: the outcome is checked here
        state = _wait_for_target(target, goal, port, bindir, data, log, user, options.timeout_seconds)
        seconds["start+replay"] = time.monotonic() - replay
        if goal.kind == "latest":
            _raise_if_short_of(end, manifest, state["replayed_lsn"], log)
            creds.unlink()  # it promoted itself: no WAL left to fetch, no key left on disk
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
        spool.close()
        tail = _log_tail(log)
        if started:
            stop_instance(str(root))
        shutil.rmtree(root, ignore_errors=True)
        if tail and tail != "(no server log)":
            log_.error("PITR instance log before cleanup:\n%s", tail)
        raise
    spool.close()
    return {
        "goal": goal.describe(),
        "base_backup": manifest.id,
        "directory": str(root),
        "data_directory": str(data),
        "port": port,
        "host": "127.0.0.1",
        "stopped_at": stop[-1] if stop else "end of archived WAL",
        "paused_for_promotion": goal.kind != "latest",
        "wal_restored": restore_report(root),
        "warnings": warnings,
        **state,
        "seconds": rounded(seconds),
    }
