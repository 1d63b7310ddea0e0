"""PostgreSQL after a restore: put the previous database back, and clean up kept copies.

A cut-over keeps the replaced database as `<db>__rollback_<ts>`. `rollback_postgres` swaps it
back in (the restored one is kept as `<db>__undone_<ts>`); `cleanup_postgres_rollbacks` drops
kept copies, and leftovers of interrupted restores (`<db>__restore_<ts>`), older than N hours.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows.common import PostgresRef, StoreRef, load_store
from flows.inputs import number
from flows.locks import component_lock
from tasks.components.postgres.common import admin, drop_database
from tasks.components.postgres.kept_copies import cleanup_task, postgres_target, rollback_task
from tasks.markdown import fields_table
from tasks.operations.written_records import recorded_write


@flow(name="rollback-postgres")
def rollback_postgres(
    database: str,
    target: PostgresRef = None,
    rollback_name: str | None = None,
    store: StoreRef = None,
) -> dict[str, Any]:
    """Put back the database the last cut-over replaced (or `rollback_name`). The database it
    replaces is kept as `<db>__undone_<ts>`, so a rollback can itself be undone. It leaves a
    restore record in the store (`restore_id`; `backup_id` there is the kept copy swapped in), so
    a rollback_restore of an earlier checklist restore into this target is refused, not run over it.

    Args:
        database: Name of the database.
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        rollback_name: The kept copy to roll back to (from the restore's report); empty: the newest.
        store: Name of the store block holding the restore records ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE, else the embedded local store.
    """
    block, store_block = postgres_target(target), load_store(store)
    with component_lock("postgres"):  # never while a backup or restore of it runs
        # its restore record: the rollback of an earlier checklist restore into this target would
        # put that restore's safety backup back over this swap; it sees the record and refuses
        kept = rollback_name or f"{database}__rollback_<newest>"
        with recorded_write(store_block, "rollback-postgres", "postgres", kept, block) as write:
            write.report = {"database": database, "rollback_name": rollback_name}
            report = rollback_task(block, database, rollback_name)
            write.record.backup_id, write.report, write.changed = report["restored_from"], report, True
    report = {**report, "restore_id": write.id}
    get_run_logger().info("rolled back %s to %s", database, report["restored_from"])
    create_markdown_artifact(
        key="rollback-postgres",
        markdown=fields_table(f"Rollback of {database}", report),
    )
    return report


@flow(name="cleanup-postgres-rollbacks")
def cleanup_postgres_rollbacks(
    older_than_hours: Annotated[float, Field(ge=0)] = 72,
    target: PostgresRef = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Drop kept copies (`__rollback_`, `__undone_`) and leftovers of interrupted restores
    (`__restore_`) older than `older_than_hours`.

    Args:
        older_than_hours: Delete kept rollback copies older than this many hours.
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        dry_run: True: only show what would be done; False: do it.
    """
    age = timedelta(hours=number("older_than_hours", older_than_hours, 0))  # inf/1e20: BadInput
    with component_lock("postgres"):  # never drop a copy a running rollback is swapping in
        report = cleanup_task(postgres_target(target), age, dry_run)
    verb = "would_drop" if dry_run else "dropped"
    names, kept = report[verb], report.get("kept", {})
    logger = get_run_logger()
    logger.info("%s: %s", verb, names or "nothing")
    for name, why in kept.items():
        logger.warning("kept %s: %s", name, why)
    create_markdown_artifact(
        key="cleanup-postgres-rollbacks",
        markdown=f"# PostgreSQL kept copies older than {older_than_hours} h\n\n"
        + ("\n".join(f"- {n}" for n in names) or "nothing to drop")
        + "".join(f"\n- kept {n}: {why}" for n, why in kept.items())
        + ("\n\n(dry run)" if dry_run else ""),
    )
    return report


DEMO_SQL = """CREATE TABLE public.functions (id serial PRIMARY KEY, name text NOT NULL, runtime text,
  memory_mb int, created timestamptz DEFAULT now());
INSERT INTO public.functions (name, runtime, memory_mb)
SELECT 'fn-' || md5(i::text), (ARRAY['python','go','node'])[1 + mod(i, 3)], 128 * (1 + mod(i, 8))
FROM generate_series(1, 1000) i;"""


@flow(name="demo-postgres")
def demo_postgres(
    target: PostgresRef = None, store: StoreRef = None, database: str = "klb_demo"
) -> dict[str, Any]:
    """Create a sample database, back it up, restore it aside as `<database>_restored` and show
    that the fingerprints match. Touches nothing else on the server."""
    from psycopg import sql

    from flows.backup import backup_component
    from flows.restore import restore_component
    from tasks.components.postgres.common import connect
    from tasks.components.postgres.fingerprint import fingerprint_database

    block = postgres_target(target)
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
