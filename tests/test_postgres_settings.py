"""Databases whose own settings change how a session behaves back up and restore, and keep those
settings; the engines never carry the password in their environment or argv."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from psycopg import sql

import tasks.components.postgres as pg
from tasks.components.postgres.common import admin, connect
from tasks.storage.session import backup_session
from tests.faults.helpers import random_secret
from tests.pg_helpers import db_names, drop, make_db, new_name, scalar, state, target_for
from tests.procs import descendant_pids

SETTINGS = {
    "read_only_default": (
        "ALTER DATABASE {db} SET default_transaction_read_only = on",
        "default_transaction_read_only",
        "on",
    ),
    "datestyle_sql_dmy": ("ALTER DATABASE {db} SET \"DateStyle\" = 'SQL, DMY'", "DateStyle", "SQL, DMY"),
    "statement_timeout_20ms": (
        "ALTER DATABASE {db} SET statement_timeout = '20ms'",
        "statement_timeout",
        "20ms",
    ),
    "role_in_database_timeout": (
        "ALTER ROLE postgres IN DATABASE {db} SET statement_timeout = '20ms'",
        "statement_timeout",
        "20ms",
    ),
    "idle_in_transaction_10ms": (
        "ALTER DATABASE {db} SET idle_in_transaction_session_timeout = '10ms'",
        "idle_in_transaction_session_timeout",
        "10ms",
    ),
    "lock_timeout_1ms": ("ALTER DATABASE {db} SET lock_timeout = '1ms'", "lock_timeout", "1ms"),
    # our sessions would run as this role (no rights on the tables): pg_dump failed
    "role_default": ("ALTER DATABASE {db} SET role = 'pg_monitor'", "role", "pg_monitor"),
    "role_in_database_role": (
        "ALTER ROLE postgres IN DATABASE {db} SET role = 'pg_monitor'",
        "role",
        "pg_monitor",
    ),
    # stored as `search_path=""`: re-applied as SQL text it was a zero-length identifier
    "empty_search_path": ("ALTER DATABASE {db} SET search_path = ''", "search_path", '""'),
    # a name outside LATIN1 (below) was an error in our queries: the backup failed
    "client_encoding_latin1": (
        "ALTER DATABASE {db} SET client_encoding = 'LATIN1'",
        "client_encoding",
        "LATIN1",
    ),
    "quoted_search_path": (
        """ALTER DATABASE {db} SET search_path = '$user', 'My "Schema"', public""",
        "search_path",
        '"$user", "My ""Schema""", public',
    ),
}


# The settings that end a session after a time: their database holds 300k rows, whose scan (and
# the fingerprint's, the dump's, the restore's) takes longer than they allow. The others change
# what a session does whatever the size, and 3k rows (26 pages) serve them at a hundredth of the
# server's work.
TIMED = {"statement_timeout_20ms", "role_in_database_timeout", "idle_in_transaction_10ms", "lock_timeout_1ms"}


def _take_backup(target, store):
    with backup_session(store, "postgres") as session:
        pg.backup(target, session)
        session.commit()
    return session.manifest


@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_a_database_whose_settings_change_sessions_backs_up_restores_and_keeps_them(
    postgres, local_store, case
):
    alter, name, value = SETTINGS[case]
    rows = 300_000 if case in TIMED else 3_000
    admin_target, db = target_for(postgres), new_name()
    make_db(admin_target, db)
    # TIMED: 300k rows, a scan of which takes longer than 20 ms, the fingerprint with it
    with connect(admin_target, db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.big AS SELECT i, md5(i::text) AS h FROM generate_series(1, %s) i",
            (rows,),
        )
        conn.execute('CREATE TABLE public."日本語" ("列" text); INSERT INTO public."日本語" VALUES (\'値\')')
    with admin(admin_target) as conn:
        conn.execute(alter.format(db=sql.Identifier(db).as_string(conn)))
    target = target_for(postgres, databases=[db])
    store = local_store()
    try:
        assert scalar(target, db, f'SHOW "{name}"') == value  # as the application sees it
        manifest = _take_backup(target, store)
        assert manifest.fingerprint["databases"][db]["tables"]["public.big"]["rows"] == rows
        with connect(target, db, autocommit=True) as conn:  # our own settings: not read-only
            conn.execute("DELETE FROM public.big WHERE i % 2 = 0; DELETE FROM app.items")
        assert state(target, db) != manifest.fingerprint["databases"][db]

        report = pg.restore(target, manifest, store, pg.RestoreOptions())

        assert report["databases"][db]["fingerprint_equal"] is True
        assert state(target, db) == manifest.fingerprint["databases"][db]
        assert scalar(target, db, f'SHOW "{name}"') == value  # the setting came back with it
        # and the restored database backs up and restores again, in place over itself
        again = _take_backup(target, store)
        pg.restore(target, again, store, pg.RestoreOptions())
        assert state(target, db) == manifest.fingerprint["databases"][db]
        assert scalar(target, db, f'SHOW "{name}"') == value
    finally:  # dropping a database drops its role-in-database settings too
        drop(admin_target, *[d for d in db_names(admin_target) if d == db or d.startswith(db + "__")])


def test_a_failing_fingerprint_is_named_not_pg_dump_s_lost_snapshot(postgres, local_store, monkeypatch):
    """The fingerprint's transaction holds the snapshot pg_dump imports: when the fingerprint fails,
    pg_dump says only "could not import the requested snapshot" (issue 14 saw it hide a cancelled
    query). The error names the fingerprint and its cause, and nothing is stored."""
    import tasks.components.postgres.dump as pg_dump_module
    from tasks.errors import ComponentFailed

    admin_target, db = target_for(postgres), new_name()
    make_db(admin_target, db)

    real = pg_dump_module.fingerprint

    def failing(conn, algorithm, kinds="rSm"):  # as a query of its scan failing on the server would
        if "r" not in kinds:  # the sequences, read before pg_dump starts
            return real(conn, algorithm, kinds)
        conn.execute("SELECT 1 / 0")

    monkeypatch.setattr(pg_dump_module, "fingerprint", failing)
    store = local_store()
    try:
        with pytest.raises(ComponentFailed, match=f"fingerprint of '{db}' failed: division by zero"):
            _take_backup(target_for(postgres, databases=[db]), store)
        assert not [p for p in Path(store.path).rglob("manifest.json")]
    finally:
        drop(admin_target, db)


# --- no password in any engine's environment or argv ----------------------------------------

_WRAPPER = """#!/bin/sh
# record what this engine was started with, wait until the test's sampler has seen it, then run it
log={log}
name=$(basename "$0")
modes="$(stat -c %a "$PGPASSFILE") $(stat -c %a "$(dirname "$PGPASSFILE")")"
echo "$PGPASSFILE $modes" > "$log/$name.$$.passfile"
i=0
while [ ! -e "$log/seen.$$" ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done
exec {real}/"$name" "$@"
"""


class _Sampler(threading.Thread):
    """Reads /proc/<pid>/environ and cmdline of every descendant of this process, repeatedly."""

    def __init__(self, secret: bytes, log: Path) -> None:
        super().__init__(daemon=True)
        self.secret, self.log, self.stop = secret, log, threading.Event()
        self.seen: dict[int, str] = {}
        self.leaks: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in descendant_pids():
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue  # gone already
                if self.secret in environ or self.secret in cmdline or b"PGPASSWORD=" in environ:
                    self.leaks.append(f"{pid}: {cmdline[:200]!r}")
                self.seen[pid] = cmdline.split(b"\0", 1)[0].decode(errors="replace")
                (self.log / f"seen.{pid}").touch()


def test_no_engine_has_the_password_in_its_environment_or_argv(postgres, local_store, tmp_path):
    user, password = new_name("leak"), random_secret("pgpw")
    admin_target, db = target_for(postgres), new_name()
    with admin(admin_target) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)
            )
        )
    make_db(admin_target, db, rows=20000)
    log, bin_dir = tmp_path / "log", tmp_path / "bin"
    log.mkdir()
    bin_dir.mkdir()
    for engine in ("pg_dump", "pg_dumpall", "pg_restore", "psql"):
        wrapper = bin_dir / engine
        wrapper.write_text(_WRAPPER.format(log=log, real=postgres.extra["bindir"]))
        wrapper.chmod(0o755)
    target = target_for(postgres, user=user, password=password, databases=[db], bin_dir=str(bin_dir))
    sampler = _Sampler(password.encode(), log)
    sampler.start()
    os.environ["PGPASSWORD"] = "inherited-" + password  # must not reach an engine either
    try:
        store = local_store()
        manifest = _take_backup(target, store)
        pg.restore(target, manifest, store, pg.RestoreOptions(include_globals=True))
    finally:
        del os.environ["PGPASSWORD"]
        sampler.stop.set()
        sampler.join()
        drop(admin_target, *[d for d in db_names(admin_target) if d == db or d.startswith(db + "__")])
        with admin(admin_target) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(user)))

    assert sampler.leaks == []
    runs = sorted(p.name for p in log.glob("*.passfile"))
    engines = {r.split(".")[0] for r in runs}
    assert engines == {"pg_dump", "pg_dumpall", "pg_restore", "psql"}
    # every engine run was sampled while it ran (it waited for that), and read a private file
    for run in runs:
        pid = int(run.split(".")[1])
        assert pid in sampler.seen, f"{run} was never sampled"
        path, file_mode, dir_mode = (log / run).read_text().split()
        assert (file_mode, dir_mode) == ("600", "700")
        assert not Path(path).exists() and not Path(path).parent.exists()  # removed afterwards


def test_a_password_with_colons_backslashes_and_quotes_reaches_every_engine(postgres, local_store):
    """The password file escapes ':' and '\\' (its field separator and escape character)."""
    user, password = new_name("odd"), "a:b\\c:'\"d \\:" + random_secret("x")
    admin_target, db = target_for(postgres), new_name()
    with admin(admin_target) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)
            )
        )
    make_db(admin_target, db)
    target = target_for(postgres, user=user, password=password, databases=[db])
    try:
        manifest = _take_backup(target, local_store())  # pg_dumpall and pg_dump log in
        assert manifest.fingerprint["databases"][db]["tables"]["app.items"]["rows"] == 200
    finally:
        drop(admin_target, db)
        with admin(admin_target) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(user)))


def test_index_builds_get_the_target_blocks_memory_and_bad_values_are_refused_up_front(postgres):
    """The post-data build's sessions sort with restore_index_memory (the server's default 64MB
    spills a large index to disk); a value the server would refuse is refused by the block."""
    import subprocess

    from pydantic import ValidationError

    from blocks.postgres import PostgresTarget
    from tasks.components.postgres.common import engine_env, tool

    target = target_for(postgres).model_copy(update={"restore_index_memory": "300MB"})
    with engine_env(target, "postgres", {"maintenance_work_mem": target.restore_index_memory}) as env:
        full = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
        full.pop("PGPASSWORD", None)
        shown = subprocess.run(
            [tool(target, "psql"), "-X", "-At", "-c", "SHOW maintenance_work_mem"],
            env=full,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    assert shown == "300MB"
    for bad in ("512kB", "3000GB", "0MB", "12 MB", "1TB"):
        with pytest.raises(ValidationError, match="restore_index_memory"):
            PostgresTarget(restore_index_memory=bad)
