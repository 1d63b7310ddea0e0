"""Kept copies of PostgreSQL databases: a cut-over keeps the replaced database as
`<db>__rollback_<ts>`; a rollback swaps it back in (keeping the restored one as `<db>__undone_<ts>`);
cleanup drops kept copies and leftovers of interrupted restores (`<db>__restore_<ts>`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE

from blocks.postgres import PostgresTarget
from tasks.components.postgres.common import (
    admin,
    aside_name,
    databases,
    drop_database,
    parse_aside,
    same_base,
)
from tasks.components.postgres.cutover import logical_slots, slots_note, swap
from tasks.components.registry import load_target
from tasks.errors import BadInput, NotFound, target_untouched


def postgres_target(ref: str | Block | None) -> PostgresTarget:
    block = load_target("postgres", ref)
    if not isinstance(block, PostgresTarget):
        raise BadInput(f"target {ref!r} is a {type(block).__name__}, not a postgres target")
    return block


def kept_copies(target: PostgresTarget) -> list[tuple[str, str, str, datetime]]:
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
        for name, base, kind, when in kept_copies(target)
        if kind == "rollback" and same_base(database, base, kind)
    )
    if rollback_name:
        if rollback_name not in {n for _, n in copies}:
            raise target_untouched(  # looked up before anything is swapped: its record says untouched
                NotFound(
                    f"{rollback_name!r} is not a kept copy of {database!r}: kept are {[n for _, n in copies]}"
                )
            )
        chosen = rollback_name
    elif copies:
        chosen = copies[-1][1]
    else:
        raise target_untouched(
            NotFound(
                f"no kept copy of {database!r} on {target.host}:{target.port} (a cut-over keeps one as "
                f"'{database}__rollback_<time>' until cleanup removes it)"
            )
        )
    report = swap(target, chosen, database, aside_name(database, "undone"))
    return {"restored_from": chosen, **report}


@task(task_run_name="drop-kept-databases", cache_policy=NO_CACHE)
def cleanup_task(target: PostgresTarget, older_than: timedelta, dry_run: bool) -> dict[str, Any]:
    """-> {"dropped" (or "would_drop"): names, "kept": {name: why}}. A copy that holds logical
    replication slots is kept, saying what to do: PostgreSQL refuses to drop it, and dropping
    its slots is a replication decision, not cleanup's; the others are dropped all the same."""
    cutoff = datetime.now(UTC) - older_than
    old = sorted(name for name, _, _, when in kept_copies(target) if when <= cutoff)
    kept: dict[str, str] = {}
    with admin(target) as conn:
        for name in old:
            if slots := logical_slots(conn, name):
                kept[name] = slots_note(name, slots)
            elif not dry_run:
                drop_database(conn, name)
    gone = [name for name in old if name not in kept]
    return {"dropped" if not dry_run else "would_drop": gone, **({"kept": kept} if kept else {})}
