"""Restore into `<db>__restore_<ts>`, compare the fingerprint with the manifest, then cut over
(the old database is kept as `<db>__rollback_<ts>`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import Field, field_validator

from blocks.postgres import PostgresTarget, check_db_name
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions
from tasks.components.postgres import extension_tables, load, properties, roles, table_parts
from tasks.components.postgres.common import (
    admin,
    aside_name,
    connect,
    drop_database,
    parse_aside,
    server_version,
)
from tasks.components.postgres.cutover import swap
from tasks.components.postgres.dump import GLOBALS
from tasks.components.postgres.fingerprint import recorded_algorithm
from tasks.errors import BadInput, ComponentFailed, IsolationTaken, target_untouched
from tasks.models import Manifest
from tasks.named_blocks import load_named
from tasks.storage.session import verify_object
from tasks.timing import rounded, timed

log = logging.getLogger(__name__)


class RestoreOptions(StrictOptions):
    databases: list[str] | None = Field(
        default=None, description="restore only these (default: all in the backup)"
    )
    rename_to: dict[str, str] = Field(default_factory=dict, description="backup name -> name on the target")
    include_globals: bool | None = Field(
        default=None,
        description="restore roles/tablespaces too: missing ones before the load, the rest just "
        "before the cut-over (default: when restoring every database)",
    )
    cut_over: bool = Field(
        default=True,
        description="False: leave the verified copy aside, rename nothing over (with the globals, "
        "roles the load needs that the server lacks are still created on it)",
    )
    no_owner: bool = Field(
        default=False, description="skip ownership and grants (a server without the roles)"
    )
    quiesce_namespace: str | None = Field(
        default=None, description="scale this namespace to 0 during the restore"
    )
    kube_block: str | None = Field(default=None, description="KubernetesTarget block name for quiescing")

    @field_validator("rename_to")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value.values():
            check_db_name(name)
            # the project reads these names as its own: one restored under a kept copy's name is
            # dropped by cleanup_postgres_rollbacks, skipped by every backup and swapped in by a
            # rollback; template0 is in no backup and seeds every side database (TEMPLATE template0)
            if name == "template0" or parse_aside(name):
                raise ValueError(
                    f"rename_to {name!r}: that name is reserved (template0, or the form "
                    "<db>__restore_|rollback_|undone_<time> of a kept copy, which cleanup drops and "
                    "backups skip): pick another name"
                )
        return value


@contextmanager
def _quiesced(options: RestoreOptions) -> Iterator[dict[str, int] | None]:
    if not options.quiesce_namespace:
        yield None
        return
    from tasks.components.kubernetes import quiesce as kube  # imported only when asked for

    block = None
    if options.kube_block:
        from blocks.kubernetes import KubernetesTarget

        block = KubernetesTarget.load(options.kube_block)
    with kube.quiesced(block, options.quiesce_namespace) as replicas:
        yield replicas


def check_restore(
    target: PostgresTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> None:
    """What the restore would refuse, checked before a checklist, safety backup or approval: the
    databases and renames against this backup, and the Kubernetes block to quiesce through."""
    plan = _plan(manifest, options)
    if target.databases and options.cut_over:
        # the checklist's safety backup holds the target's databases: a rename onto another one
        # that exists would replace data no rollback could put back
        with admin(target) as conn:
            present = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        outside = sorted(d for d in plan.values() if d in present and d not in target.databases)
        if outside:
            raise BadInput(
                f"rename_to would replace {outside}, which exist on {target.host}:{target.port} "
                f"outside the target block's databases {list(target.databases)}: the safety backup "
                "(and so a rollback) would not hold them. Add them to the target's databases, or "
                "rename to a name that does not exist; nothing was done"
            )
    if options.kube_block:
        from blocks.kubernetes import KubernetesTarget

        if load_named(KubernetesTarget, options.kube_block) is None:
            raise BadInput(
                f"kube_block {options.kube_block!r}: no klb-kubernetes-target block of that name: "
                "name one that exists (Prefect UI, Blocks), or leave it out for the in-cluster "
                "credentials; nothing was done"
            )


def _plan(manifest: Manifest, options: RestoreOptions) -> dict[str, str]:
    """backup database -> target database name; refuses anything unclear."""
    in_backup = manifest.engine.get("databases", {})
    wanted = options.databases or list(in_backup)
    unknown = [d for d in wanted if d not in in_backup]
    if unknown:
        raise BadInput(f"database(s) {unknown} are not in backup {manifest.id} (it has {sorted(in_backup)})")
    stray = [d for d in options.rename_to if d not in wanted]
    if stray:
        raise BadInput(f"rename_to names {stray}, which are not being restored ({wanted})")
    plan = {d: options.rename_to.get(d, d) for d in wanted}
    if len(set(plan.values())) != len(plan):
        raise BadInput(f"two databases would be restored to the same name: {plan}")
    if not plan:
        raise BadInput(f"backup {manifest.id} has no databases to restore")
    return plan


def restore_aside(
    target: PostgresTarget,
    manifest: Manifest,
    store: StoreBlock,
    db: str,
    side: str,
    no_owner: bool = False,
) -> dict[str, Any]:
    """Restore backup database `db` into a new database `side`, check its fingerprint, then put
    the recorded database properties on it (after the load: a read-only default or a short
    statement_timeout must not apply to it). Drops `side` on any failure; never touches any
    other database."""
    info = manifest.engine["databases"][db]
    obj = manifest.object(info["object"])
    post = manifest.object(info["post_data_object"]) if info.get("post_data_object") else None
    props = info.get("properties") or properties.legacy(info)
    with admin(target) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (side,)).fetchone():
            raise IsolationTaken(f"database {side!r} already exists: drop it or pick another name")
        properties.create_side(conn, side, props, no_owner)
    seconds: dict[str, float] = {}  # per phase: what a drill's RTO is made of
    try:
        if post is None:  # a backup from before post-data had its own object: all in one stream
            with timed(seconds, "load"):
                load.load_stream(target, store, obj, db, side, no_owner, single_transaction=True)
            with timed(seconds, "fingerprint"):
                actual = load.check_fingerprint(target, manifest, db, side)
                views = load.check_materialized_views(target, manifest, db, side)
        else:
            with load.post_data_file(store, post) as post_path:  # kilobytes: checked first
                # no --single-transaction: the side database already makes the restore all or
                # nothing (dropped on any failure), and one transaction over every table can run
                # out of lock slots (max_locks_per_transaction) on a database with many tables
                # post-data ends by refreshing materialized views, and a view's query may write
                # (a volatile function keeping an audit log): then every table is read after it
                refreshes = load.refreshes_views(manifest, db)
                with timed(seconds, "load"):
                    load.load_stream(target, store, obj, db, side, no_owner, single_transaction=False)
                    # so may a CHECK's or a generated column's function, for each row loaded into
                    # another table: no table is read before every load and the build are done
                    late = refreshes or load.checks_may_write(target, side)
                    algorithm = None if late else recorded_algorithm(manifest.fingerprint)
                    # the large tables, made empty by pre-data: their parts in parallel, each
                    # whole one read for the fingerprint as soon as it is loaded
                    read = table_parts.load(
                        target, store, manifest, info, db, side, load.POST_DATA_JOBS, algorithm
                    )
                with timed(seconds, "fingerprint+post_data"):
                    if late:
                        load.build_post_data(target, post_path, db, side, no_owner)
                        actual = load.check_fingerprint(target, manifest, db, side)
                    else:
                        actual = load.fingerprint_while_building(
                            target, manifest, db, side, post_path, no_owner, read
                        )
                        if load.build_may_write(target, side):  # read again, the build done
                            actual = load.check_fingerprint(target, manifest, db, side)
                    # once post-data has refreshed them
                    views = load.check_materialized_views(target, manifest, db, side)
        lost: dict[str, Any] = {}
        if info.get("extension_tables"):
            with connect(target, side, autocommit=True) as conn:
                lost = extension_tables.differences(
                    info["extension_tables"], extension_tables.row_counts(conn)
                )
        with admin(target) as conn:
            properties.apply(conn, side, props, no_owner)
            now = properties.subscriptions(conn, side)
    except BaseException:
        with admin(target) as conn:
            drop_database(conn, side)
        raise
    rows = sum(t["rows"] for t in actual["tables"].values())
    if views:
        log.warning("restored %s: materialized views differ from the backup: %s", db, views)
    if lost:
        log.warning(
            "restored %s: tables of an extension (not its configuration tables) came back with other "
            "rows than at backup; pg_dump does not dump them, so this backup cannot bring them back "
            "(make them configuration tables: pg_extension_config_dump): %s",
            db,
            lost,
        )
    return {
        "tables": len(actual["tables"]),
        "rows": rows,
        "fingerprint_equal": True,
        **({"materialized_views_differ": views} if views else {}),
        **({"extension_tables_differ": lost} if lost else {}),
        # pg_dump makes every subscription disabled; enabled again it could apply changes twice
        "subscriptions_left_disabled": [
            n for n, on in info.get("subscriptions", {}).items() if on and not now.get(n, True)
        ],
        "seconds": rounded(seconds),
    }


def applies_globals(options: RestoreOptions) -> bool:
    """Whether the restore applies the backup's roles (globals): said, else only a whole restore."""
    return options.include_globals if options.include_globals is not None else not options.databases


def writes_target(options: RestoreOptions) -> bool:
    """Aside only (cut_over=False) and no globals: side databases, nothing renamed over."""
    return options.cut_over is not False or applies_globals(options)


def restore(
    target: PostgresTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    try:
        plan = _plan(manifest, options)
    except BadInput as exc:  # before anything: a rollback must find nothing to undo
        raise target_untouched(exc) from None
    with_globals = applies_globals(options)
    # every byte checks out before anything on the server changes
    facts = manifest.engine["databases"]
    parts = ("object", "post_data_object")  # backups from before the split have no post-data
    needed = [manifest.object(facts[d][p]) for d in plan for p in parts if p in facts[d]]
    needed += [manifest.object(n) for d in plan for n in table_parts.object_names(facts[d])]
    if with_globals:
        needed.insert(0, manifest.object(GLOBALS))
    changed = False  # the live server changes with the roles (globals) or at the cut-over
    made: dict[str, list[str]] = {"roles": [], "tablespaces": []}
    try:
        if with_globals or options.quiesce_namespace:  # these change the live server before the load
            for obj in needed:
                verify_object(store, obj)
        with admin(target) as conn:  # reachable, password right: before quiescing anything
            version = server_version(conn)
        report: dict[str, Any] = {"server_version": version, "databases": {}}
        sides: dict[str, str] = {}
        with _quiesced(options) as replicas:
            if replicas is not None:
                report["quiesced"] = {"namespace": options.quiesce_namespace, "replicas": replicas}
            raw = roles.read_globals(manifest, store) if with_globals else b""
            if with_globals:  # what the load needs; the roles as they are now stay as they are
                made = roles.make_missing(target, raw)
            try:
                for db, name in plan.items():
                    side = aside_name(name, "restore")
                    report["databases"][name] = {
                        "from": db,
                        **restore_aside(target, manifest, store, db, side, options.no_owner),
                    }
                    sides[name] = side
                    _enable_commands(report["databases"][name], name if options.cut_over else side)
            except BaseException:
                with admin(target) as conn:
                    for side in sides.values():
                        drop_database(conn, side)
                raise
            if not options.cut_over:
                for name, side in sides.items():
                    report["databases"][name]["restored_aside_as"] = side
                if with_globals:  # the aside copies need them; nothing live was changed
                    report["globals"] = {"applied": False, "created_bare": made}
                return report
            changed = True
            if with_globals:  # every database is verified: now the roles as the backup has them
                try:
                    applied = roles.apply_globals(target, raw, manifest.engine.get("every_role_settings"))
                    report["globals"] = {**applied, "created_bare": made}
                except BaseException:
                    with admin(target) as conn:
                        for side in sides.values():
                            drop_database(conn, side)
                    raise
            _cut_over_all(target, sides, report, with_globals)
    except BaseException as exc:
        # every side database is gone; what the load needed is dropped again
        if not changed and roles.drop_made(target, made):
            target_untouched(exc)
        raise
    return report


def _enable_commands(report: dict[str, Any], name: str) -> None:
    """Each subscription enabled at backup and left disabled, with the command that enables it:
    not run here, as it may apply again what the restored data already has (its slot on the
    publisher is where the backed-up one was, or where a later one left it)."""
    left = report.pop("subscriptions_left_disabled", [])
    if not left:
        return
    db = '"' + name.replace('"', '""') + '"'
    report["subscriptions_left_disabled"] = [
        {
            "subscription": sub,
            "enable": f'ALTER SUBSCRIPTION "{sub.replace(chr(34), chr(34) * 2)}" ENABLE; -- in database {db}',
        }
        for sub in left
    ]
    log.warning(
        "restored %s: subscriptions enabled at backup are left disabled (enabling one may apply "
        "changes twice; check its publisher's slot first): %s",
        name,
        report["subscriptions_left_disabled"],
    )


def _cut_over_all(target: PostgresTarget, sides: dict[str, str], report: dict[str, Any], roles: bool) -> None:
    """Each database is swapped atomically; if one swap fails, say exactly where things stand."""
    done: list[str] = []
    for name, side in sides.items():
        phases: dict[str, float] = {}
        try:
            with timed(phases, "cut-over"):  # the last part of the RTO, beside the load's
                report["databases"][name].update(swap(target, side, name, aside_name(name, "rollback")))
            report["databases"][name].setdefault("seconds", {}).update(rounded(phases))
        except Exception as exc:
            left = {n: s for n, s in sides.items() if n not in done}
            raise ComponentFailed(
                f"cut-over of {name!r} failed ({exc}); already cut over: {done or 'none'} (undo each "
                f"with rollback_postgres); verified copies left aside, not in use: {left}"
                + ("; the roles were already put back as the backup has them" if roles else "")
            ) from None
        done.append(name)
