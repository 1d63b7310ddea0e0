"""A recovered PITR instance once recover() made it: its state file, whether it runs, promotion
and stopping. Promotion acts on the instance of THIS directory only: its port is checked to be
served by that data directory, so a dead instance whose port another server took (free ports
are reused) is never promoted in its place, nor reported promoted."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg

from blocks.pitr import PitrTarget
from tasks.components.postgres_pitr.server import _row, connect
from tasks.errors import BadInput, ComponentFailed
from tasks.proc import run

STATE_FILE = "pitr.json"
CREDENTIALS = "aws-credentials"


def as_user(user: str) -> list[str]:
    """The prefix that runs a command as the instance's OS user (when we are root)."""
    if os.geteuid() == 0 and user != getpass.getuser():
        return ["runuser", "-u", user, "--"]
    return []


def is_running(bindir: Path, data: Path, user: str) -> bool:
    try:
        run([*as_user(user), str(bindir / "pg_ctl"), "status", "-D", str(data)], timeout=30)
        return True
    except ComponentFailed:
        return False


def instance_state(conn: psycopg.Connection) -> dict[str, Any]:
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


def load_state(directory: str) -> tuple[Path, dict[str, Any]]:
    root = Path(directory)
    try:
        return root, json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise BadInput(f"{directory} is not a PITR instance directory (no {STATE_FILE})") from None


def _postmaster(data: Path) -> tuple[int, int] | None:
    """(pid, port) of the postmaster running on `data`, from postmaster.pid; None if it is not."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale file: the server died without removing it
    except PermissionError:
        pass  # alive, another user's
    return pid, port


def _require_running(root: Path, port: int, when: str) -> int:
    found = _postmaster(root / "data")
    if found is None or found[1] != port:
        raise ComponentFailed(
            f"the PITR instance in {root} is not running {when} (no live postmaster on port {port} in "
            f"{root / 'data'}/postmaster.pid): nothing was promoted by this call. Look at {root}/server.log; "
            "start it again (pg_ctl start -D <data>) to continue its recovery, or recover again"
        )
    return found[0]


def promote(target: PitrTarget, directory: str) -> dict[str, Any]:
    """End recovery on a PITR instance paused at its target: it becomes writable (new timeline)."""
    root, st = load_state(directory)
    pid = _require_running(root, st["port"], "before promotion")
    with connect(target, "127.0.0.1", st["port"]) as conn:
        served = Path(_row(conn, "select current_setting('data_directory')")[0])
        if served.resolve() != (root / "data").resolve():
            raise ComponentFailed(
                f"port {st['port']} is served by {served}, not by the PITR instance in {root}: "
                "nothing was promoted. That instance is not running; recover again"
            )
        if not _row(conn, "select pg_is_in_recovery()")[0]:
            raise BadInput(f"the instance in {directory} is already promoted")
        if not _row(conn, "select pg_promote(true, 300)")[0]:
            raise ComponentFailed(f"promotion of {directory} did not finish in 300 s")
        state = instance_state(conn)
        # the control file's timeline waits for the next checkpoint; the WAL file name does not
        state["timeline"] = int(_row(conn, "select pg_walfile_name(pg_current_wal_lsn())")[0][:8], 16)
    if _require_running(root, st["port"], "after promotion") != pid or state["in_recovery"]:
        raise ComponentFailed(
            f"the PITR instance in {root} restarted or is still in recovery after promotion"
        )
    (root / CREDENTIALS).unlink(missing_ok=True)  # no more WAL to fetch
    return {"directory": str(root), "port": st["port"], "promoted": True, **state}


def stop_instance(directory: str) -> None:
    root, st = load_state(directory)
    data = root / "data"
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(ComponentFailed):  # already stopped
            run(
                [*as_user(st["os_user"]), str(Path(st["bindir"]) / "pg_ctl"), "stop", "-D", str(data)]
                + ["-m", "fast", "-w"],
                timeout=120,
            )
