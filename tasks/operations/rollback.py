"""What a rollback puts back, and whether a restore changed anything to roll back.

A rollback restores the safety backup taken just before a checklist restore. With the
component's default options that is not the undo of the restore: Velero leaves existing objects
as they are (existing_resource_policy=none), so a Kubernetes rollback changed nothing and said
'rolled back'; a restore of one database, step or vhost was rolled back by putting back every
one of them, over writes made since to those the restore never touched. So the rollback takes
the restore's own scope (what it wrote to, after renames and mappings) and overwrites it. A
restore that by its options never wrote to its target (postgres cut_over=False without roles,
etcd without execute_swap, a PITR into a new instance) has nothing to roll back. A restore whose
report says what it overwrote (the component's `wrote`: Kubernetes, volumes, RabbitMQ) is rolled
back by exactly that: one that overwrote nothing (Velero's policy none only creates what is
missing, an import of definitions the broker holds already) has nothing to put back, and one
whose scope reaches objects it left alone is put back by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blocks.store import StoreBlock
from tasks.errors import BackupError, BadInput
from tasks.models import Manifest
from tasks.storage.catalog import get_backup
from tasks.verbs import restore_options, writes_target, wrote

# the options of a Kubernetes restore that narrow what it wrote, carried over to its rollback
KUBERNETES_SCOPE = (
    "resources",
    "exclude_resources",
    "names",
    "label_selector",
    "restore_pvs",
    "include_cluster_resources",
    "timeout_seconds",
)


def _restored_backup(store: StoreBlock, backup_id: str, component: str) -> Manifest | None:
    try:
        return get_backup(store, backup_id, component)
    except BackupError:  # deleted by retention since: the scope falls back to the safety backup's
        return None


def _kubernetes(
    store: StoreBlock,
    options: dict,
    backup: Callable[[], Manifest | None],
    safety: Manifest,
    done: dict[str, Any] | None,
) -> dict:
    from tasks.components.kubernetes import canonical_resource, load_document  # Velero's, only here
    from tasks.components.kubernetes.written import exact_rollback

    inventory = load_document(store, safety)["inventory"]
    held = set(inventory)
    mapping = options.get("namespace_mapping") or {}
    sources = options.get("namespaces")
    if sources is None and (restored := backup()) is not None:
        sources = sorted(load_document(store, restored)["inventory"])
    out: dict[str, Any] = {k: options[k] for k in KUBERNETES_SCOPE if k in options}
    out["existing_resource_policy"] = "update"  # "none" would leave the restored objects in place
    if _wrote_cluster_scoped(store, options, backup):
        # a restore of the whole backup overwrote cluster-scoped objects (CRDs, ClusterRoles, PVs):
        # the rollback puts them back too, even when it names fewer namespaces than the safety
        # backup holds (one created since the restored backup), which Velero reads as "leave them"
        out["include_cluster_resources"] = True
    if sources is not None:
        skip = set(options.get("exclude_namespaces") or [])
        written = sorted({mapping.get(n, n) for n in sources if n not in skip})
        out["namespaces"] = _held("namespaces", written, held)
    elif skip := [n for n in options.get("exclude_namespaces") or [] if n in held]:
        out["exclude_namespaces"] = skip  # those the safety backup holds (Velero: the same)
    if options.get("names"):  # those the safety backup holds; the others the restore created
        kinds = {canonical_resource(r) for r in options.get("resources") or []}
        have = {
            name
            for ns in out.get("namespaces") or sorted(held)
            for plural, names in inventory.get(ns, {}).items()
            if not kinds or plural in kinds
            for name in names
        }
        out["names"] = _held("names", list(options["names"]), have)
    if done is not None:  # what it overwrote is known: that, and nothing the restore left alone
        out = exact_rollback(out, done, inventory, safety.id)
    return out


def _wrote_cluster_scoped(store: StoreBlock, options: dict, backup: Callable[[], Manifest | None]) -> bool:
    """Whether a Kubernetes restore with these options included cluster-scoped objects, as
    restores.restore_document decides it (asked for, or the whole backup restored)."""
    from tasks.components.kubernetes import load_document

    given = options.get("include_cluster_resources")
    if given is not None:
        return bool(given)
    if options.get("exclude_namespaces") or options.get("namespace_mapping") or options.get("names"):
        return False
    if options.get("namespaces") is None:
        return True
    restored = backup()
    if restored is None:
        return False
    return set(options["namespaces"]) >= set(load_document(store, restored)["inventory"])


def _postgres(options: dict, backup: Callable[[], Manifest | None], safety: Manifest) -> dict:
    held = set(safety.engine.get("databases") or {})
    from tasks.components.postgres import applies_globals  # the component's rule, used only here

    out: dict[str, Any] = {"include_globals": applies_globals(restore_options("postgres", options))}
    if options.get("cut_over", True) is False:
        raise BadInput(
            "the restore left its databases aside (cut_over=False) and replaced none; only the "
            "roles it applied changed, and a rollback cannot put roles back alone: nothing was done"
        )
    sources = options.get("databases")
    if sources is None and (restored := backup()) is not None:
        sources = list(restored.engine.get("databases") or {})
    if sources is not None:
        rename = options.get("rename_to") or {}
        out["databases"] = _held("databases", sorted({rename.get(d, d) for d in sources}), held)
    return out


def _held(what: str, written: list[str], held: set[str]) -> list[str]:
    """Those of `written` the safety backup holds; the others did not exist before the restore."""
    kept = [n for n in written if n in held]
    if not kept:
        raise BadInput(
            f"the restore wrote only {what} {written}, which did not exist before it (its safety "
            "backup holds none of them): there is nothing to put back; delete them by hand if they "
            "are not wanted; nothing was done"
        )
    return kept


def rollback_options(
    store: StoreBlock,
    component: str,
    backup_id: str,
    options: dict[str, Any],
    safety: Manifest,
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The restore options that put back, from `safety`, exactly what the restore of `backup_id`
    with `options` (as recorded) wrote to (its `report` may say which objects it overwrote);
    BadInput when there is nothing it can put back."""
    if not writes_target(component, options):
        raise BadInput(
            f"the restore's options ({options or 'defaults'}) wrote nothing to its {component} "
            "target, so there is nothing to roll back; the current data stays as it is"
        )

    def backup() -> Manifest | None:  # read only when the options do not name the scope
        return _restored_backup(store, backup_id, component)

    if component in ("kubernetes", "volumes"):
        # narrowed by the resource names as Velero resolved them ('ksvc' matched no kind as spelt)
        scope = {**options, **(report or {}).get("resolved_resources", {})}
        return _kubernetes(store, scope, backup, safety, wrote(component, options, report))
    if component == "postgres":
        return _postgres(options, backup, safety)
    if component == "etcd":
        return {"execute_swap": True}
    if component == "rabbitmq":
        return _rabbitmq(store, options, safety, wrote(component, options, report))
    if component == "app-state" and options.get("steps"):
        held = {o.name for o in safety.objects}
        return {"steps": _held("steps", list(options["steps"]), held)}
    return {}


def _rabbitmq(store: StoreBlock, options: dict, safety: Manifest, done: dict[str, list[str]] | None) -> dict:
    """From the safety backup: exactly the definitions the restore overwrote (its report says
    which), by name; the whole vhost (or broker) it restored only when its report cannot tell (a
    record from before reports said it). Refused when the safety backup does not hold them all,
    or when they are queues, exchanges or vhost metadata, which an import never replaces."""
    from tasks.components.rabbitmq.definitions import _load  # the component's own, only here
    from tasks.components.rabbitmq.written import narrowed, refuse_unsafe_rollback

    vhost = {"vhost": options.get("into_vhost") or options["vhost"]} if options.get("vhost") else {}
    # the safety backup is the target broker's own state: its shovels and federation are put back
    # even when that backup does not record which broker it came from (one taken before it did)
    vhost["import_message_movers"] = True
    if done is None:
        return vhost
    refuse_unsafe_rollback(done["overwritten"], safety.id)
    _, absent = narrowed(_load(store, safety), done["overwritten"])
    if absent:
        raise BadInput(
            f"the restore overwrote {absent[:20]}, which its safety backup {safety.id} does not hold "
            "(it backed up other vhosts than the restore wrote to): put them back by hand; nothing was done"
        )
    return {**vhost, "only": list(done["overwritten"])}


def _velero_created(store: StoreBlock, options: dict, restored: Manifest, safety: Manifest) -> list[str]:
    """Namespaces and objects the restore wrote that the safety backup does not hold: a rollback
    (policy update from the safety backup) overwrites what existed, and leaves these."""
    from tasks.components.kubernetes import canonical_resource, load_document

    before = load_document(store, safety)["inventory"]
    wrote = load_document(store, restored)["inventory"]
    mapping = options.get("namespace_mapping") or {}
    skip = set(options.get("exclude_namespaces") or [])
    kinds = {canonical_resource(r) for r in options.get("resources") or []}
    names = set(options.get("names") or [])
    out: list[str] = []
    for source in options.get("namespaces") or sorted(wrote):
        if source in skip or source not in wrote:
            continue
        ns = mapping.get(source, source)
        if ns not in before:
            out.append(f"namespace {ns}")
            continue
        for plural, held in sorted(wrote[source].items()):
            if kinds and plural not in kinds:
                continue
            there = set(before[ns].get(plural, []))
            out += [f"{ns}/{plural}/{n}" for n in held if n not in there and (not names or n in names)]
    return out


def created_by_restore(
    store: StoreBlock,
    component: str,
    backup_id: str,
    options: dict[str, Any],
    safety: Manifest,
    report: dict[str, Any] | None = None,
) -> list[str]:
    """What the restore of `backup_id` (with `options`, as recorded) created that its safety
    backup does not hold (new databases, namespaces, objects, vhosts, steps): a rollback puts back
    what the safety backup holds and cannot tell these from what was written since, so it leaves
    them, and says so; and what Velero merged into ServiceAccounts, which no restore takes away.
    Listed, never deleted here: deleting is the operator's call."""
    if not writes_target(component, options):
        return []
    if component == "rabbitmq" and (done := wrote(component, options, report)) is not None:
        return list(done["created"])  # what its import created, by name (its report)
    restored = _restored_backup(store, backup_id, component)
    merged: list[str] = []
    if component in ("kubernetes", "volumes"):
        from tasks.components.kubernetes.written import merges_left  # Velero's, only here

        merged = merges_left(wrote(component, options, report))  # a rollback only adds to those
    if restored is None:
        return [f"unknown: backup {backup_id} is gone, so what its restore created cannot be listed", *merged]
    if component in ("kubernetes", "volumes"):
        return _velero_created(store, options, restored, safety) + merged
    if component == "postgres":
        rename = options.get("rename_to") or {}
        written = options.get("databases") or list(restored.engine.get("databases") or {})
        held = set(safety.engine.get("databases") or {})
        left = [f"database {rename.get(d, d)}" for d in written if rename.get(d, d) not in held]
        with_globals = options.get("include_globals")
        if with_globals if with_globals is not None else not options.get("databases"):
            # roles the restore's globals created (a rollback puts databases back, not roles)
            left += [f"role {r}" for r in sorted(_roles(store, restored) - _roles(store, safety))]
        return left
    if component == "rabbitmq":
        held = set(safety.engine.get("vhost_metadata") or {})
        written = [options.get("into_vhost") or options["vhost"]] if options.get("vhost") else []
        written = written or list(restored.engine.get("vhost_metadata") or {})
        return [f"vhost {v}" for v in written if v not in held]
    if component == "app-state":
        held = {o.name for o in safety.objects}
        return [
            f"step {s}" for s in options.get("steps") or [o.name for o in restored.objects] if s not in held
        ]
    return []


def _roles(store: StoreBlock, manifest: Manifest) -> set[str]:
    """The roles a postgres backup's globals create."""
    from tasks.components.postgres import roles

    try:
        return set(roles.role_names(roles.read_globals(manifest, store)))
    except (KeyError, BackupError):  # no globals object, or unreadable: nothing to tell from it
        return set()
