"""PostgreSQL after a restore: put the previous database back, and clean up kept copies.

A cut-over keeps the replaced database as `<db>__rollback_<ts>`. `rollback_postgres` swaps it
back in (the restored one is kept as `<db>__undone_<ts>`); `cleanup_postgres_rollbacks` drops
kept copies, and leftovers of interrupted restores (`<db>__restore_<ts>`), older than N hours.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from blocks.postgres import PostgresTarget
from flows.locks import component_lock
from tasks.components.postgres.common import (
    admin,
    aside_name,
    databases,
    drop_database,
    parse_aside,
    same_base,
)
from tasks.components.postgres.cutover import swap
from tasks.components.registry import load_target
from tasks.errors import BadInput, NotFound


def _target(ref: str | Block | None) -> PostgresTarget:
    block = load_target("postgres", ref)
    if not isinstance(block, PostgresTarget):
        raise BadInput(f"target {ref!r} is a {type(block).__name__}, not a postgres target")
    return block


def _asides(target: PostgresTarget) -> list[tuple[str, str, str, datetime]]:
    with admin(target) as conn:
        names = list(databases(conn))
    out = []
    for name in names:
        parsed = parse_aside(name)
        if parsed:
            out.append((name, *parsed))
    return out


@task(task_run_name="rollback-{database}", cache_policy=NO_CACHE)
def rollback_task(target: PostgresTarget, database: str, rollback_name: str | None = None) -> dict[str, Any]:
    copies = sorted(
        (when, name)
        for name, base, kind, when in _asides(target)
        if kind == "rollback" and same_base(database, base)
    )
    if rollback_name:
        if rollback_name not in {n for _, n in copies}:
            raise NotFound(
                f"{rollback_name!r} is not a kept copy of {database!r}: kept are {[n for _, n in copies]}"
            )
        chosen = rollback_name
    elif copies:
        chosen = copies[-1][1]
    else:
        raise NotFound(
            f"no kept copy of {database!r} on {target.host}:{target.port} (a cut-over keeps one as "
            f"'{database}__rollback_<time>' until cleanup removes it)"
        )
    report = swap(target, chosen, database, aside_name(database, "undone"))
    return {"restored_from": chosen, **report}


@flow(name="rollback-postgres")
def rollback_postgres(
    database: str,
    target: str | Block | None = None,
    rollback_name: str | None = None,
) -> dict[str, Any]:
    """Put back the database the last cut-over replaced (or `rollback_name`). The database it
    replaces is kept as `<db>__undone_<ts>`, so a rollback can itself be undone."""
    with component_lock("postgres"):  # never while a backup or restore of it runs
        report = rollback_task(_target(target), database, rollback_name)
    get_run_logger().info("rolled back %s to %s", database, report["restored_from"])
    create_markdown_artifact(
        key="rollback-postgres",
        markdown=f"# Rollback of {database}\n\n| field | value |\n|---|---|\n"
        + "".join(f"| {k} | {v} |\n" for k, v in report.items()),
    )
    return report


@task(task_run_name="drop-kept-databases", cache_policy=NO_CACHE)
def cleanup_task(target: PostgresTarget, older_than: timedelta, dry_run: bool) -> dict[str, list[str]]:
    cutoff = datetime.now(UTC) - older_than
    old = sorted(name for name, _, _, when in _asides(target) if when <= cutoff)
    if not dry_run and old:
        with admin(target) as conn:
            for name in old:
                drop_database(conn, name)
    return {"dropped" if not dry_run else "would_drop": old}


@flow(name="cleanup-postgres-rollbacks")
def cleanup_postgres_rollbacks(
    older_than_hours: Annotated[float, Field(ge=0)] = 72,
    target: str | Block | None = None,
    dry_run: bool = False,
) -> dict[str, list[str]]:
    """Drop kept copies (`__rollback_`, `__undone_`) and leftovers of interrupted restores
    (`__restore_`) older than `older_than_hours`."""
    report = cleanup_task(_target(target), timedelta(hours=older_than_hours), dry_run)
    names = next(iter(report.values()))
    get_run_logger().info("%s: %s", next(iter(report)), names or "nothing")
    create_markdown_artifact(
        key="cleanup-postgres-rollbacks",
        markdown=f"# PostgreSQL kept copies older than {older_than_hours} h\n\n"
        + ("\n".join(f"- {n}" for n in names) or "nothing to drop")
        + ("\n\n(dry run)" if dry_run else ""),
    )
    return report


DEMO_SQL = """CREATE TABLE functions (id serial PRIMARY KEY, name text NOT NULL, runtime text,
  memory_mb int, created timestamptz DEFAULT now());
INSERT INTO functions (name, runtime, memory_mb)
SELECT 'fn-' || md5(i::text), (ARRAY['python','go','node'])[1 + mod(i, 3)], 128 * (1 + mod(i, 8))
FROM generate_series(1, 1000) i;"""


@flow(name="demo-postgres")
def demo_postgres(
    target: str | Block | None = None, store: str | Block | None = None, database: str = "klb_demo"
) -> dict[str, Any]:
    """Create a sample database, back it up, restore it aside as `<database>_restored` and show
    that the fingerprints match. Touches nothing else on the server."""
    from psycopg import sql

    from flows.backup import backup_component
    from flows.restore import restore_component
    from tasks.components.postgres.common import connect, fingerprint_database

    block = _target(target)
    with admin(block) as conn:
        for name in (database, f"{database}_restored"):
            drop_database(conn, name)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    with connect(block, database, autocommit=True) as conn:
        conn.execute(DEMO_SQL)
    demo_target = block.model_copy(update={"databases": [database]})
    backup = backup_component("postgres", target=demo_target, store=store)
    restored = restore_component(
        "postgres",
        backup_id=backup.id,
        target=demo_target,
        store=store,
        options={"rename_to": {database: f"{database}_restored"}, "include_globals": False},
    )
    same = fingerprint_database(block, database) == fingerprint_database(block, f"{database}_restored")
    create_markdown_artifact(
        key="demo-postgres",
        markdown=f"# PostgreSQL demo\n\nbackup `{backup.id}` ({backup.size} bytes stored), restored aside "
        f"as `{database}_restored`; fingerprints equal: **{same}**",
    )
    return {
        "backup_id": backup.id,
        "restored_as": f"{database}_restored",
        "fingerprints_equal": same,
        **restored,
    }
