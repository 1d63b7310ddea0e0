"""Helpers for the PostgreSQL tests: sample databases, child processes, state snapshots."""

from __future__ import annotations

import os
import re
import secrets
import signal
import time
from pathlib import Path

import psycopg
from psycopg import sql

from blocks.postgres import PostgresTarget
from tasks.components.postgres.common import admin, connect, drop_database
from tasks.components.postgres.fingerprint import fingerprint_database


def target_for(postgres, **kwargs) -> PostgresTarget:
    fields = {
        "host": "127.0.0.1",
        "port": postgres.port,
        "user": "postgres",
        "password": postgres.extra["password"],
        "bin_dir": str(postgres.extra["bindir"]),
    }
    return PostgresTarget(**{**fields, **kwargs})


def new_name(prefix: str = "t") -> str:
    return f"{prefix}_{secrets.token_hex(3)}"


def make_db(target: PostgresTarget, name: str, rows: int = 200, owner: str | None = None) -> None:
    """A database with the awkward parts: PK and no-PK tables, timestamptz, numeric, jsonb, bytea,
    NULLs, a sequence, a schema of its own."""
    with admin(target) as conn:
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            create += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        conn.execute(create)
    with connect(target, name, autocommit=True) as conn:
        conn.execute(
            """CREATE SCHEMA app;
               CREATE TABLE app.items (id serial PRIMARY KEY, name text, price numeric(10,2),
                   created timestamptz DEFAULT now(), data jsonb, blob bytea, ratio float8);
               CREATE TABLE public.logs (msg text, at timestamptz);"""
        )
        conn.execute(
            """INSERT INTO app.items (name, price, data, blob, ratio)
               SELECT md5(i::text), i / 7.0, jsonb_build_object('i', i, 'k', md5(i::text)),
                      decode(md5(i::text), 'hex'), CASE WHEN mod(i, 10) = 0 THEN NULL ELSE i / 3.0 END
               FROM generate_series(1, %s) i""",
            (rows,),
        )
        conn.execute(
            "INSERT INTO public.logs SELECT repeat(md5(i::text), 3), now() FROM generate_series(1, %s) i",
            (rows,),
        )
        if owner:
            conn.execute(sql.SQL("ALTER TABLE app.items OWNER TO {}").format(sql.Identifier(owner)))


def exec_in(target: PostgresTarget, db: str, statement: str) -> None:
    """As an application would: the database's and role's own settings apply."""
    with connect(target, db, autocommit=True, own_settings=False) as conn:
        conn.execute(statement)


def scalar(target: PostgresTarget, db: str, query: str, params=()):
    """As an application would: the database's and role's own settings apply."""
    with connect(target, db, autocommit=True, own_settings=False) as conn:
        return conn.execute(query, params or None).fetchone()[0]


def db_names(target: PostgresTarget) -> set[str]:
    with admin(target) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def state(target: PostgresTarget, db: str) -> dict:
    return fingerprint_database(target, db)


def children(name: str, parent: int | None = None) -> list[int]:
    """Pids of processes called `name` whose parent is `parent` (default: this process)."""
    parent = parent or os.getpid()
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
            ppid = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if comm == name and ppid == parent:
            found.append(int(stat.parent.name))
    return found


def kill_child(name: str, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = children(name)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            return pids[0]
        time.sleep(0.01)
    raise AssertionError(f"no child process {name} appeared")


def drop(target: PostgresTarget, *names: str) -> None:
    with admin(target) as conn:
        for name in names:
            drop_database(conn, name)  # a template too (a kept template1__rollback_ copy)


def dump_lines(out: str) -> list[str]:
    """pg_dump(all)'s text, to compare: without its per-run `\\restrict` key (random, against psql
    meta-command injection), each table's rows sorted (tables loaded in parts, side by side, keep
    every row, not the order of the rows on disk, which no query without ORDER BY may rely on)."""
    lines: list[str] = []
    rows: list[str] | None = None
    for line in out.splitlines():
        if re.match(r"\\(un)?restrict ", line):
            continue
        if rows is not None and line != "\\.":
            rows.append(line)
            continue
        if rows is not None:
            lines += sorted(rows)
            rows = None
        lines.append(line)
        if line.startswith("COPY ") and line.endswith(" FROM stdin;"):
            rows = []
    return lines


__all__ = ["psycopg"]
