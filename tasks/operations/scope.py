"""What a backup covers, and the one place 'latest' (or the newest at or before a time) is resolved
for a restore, a plan, a drill or a DR scenario.

A backup can be narrower than its component: taken with a target limited to one namespace, one
database, one vhost. The newest backup of the component is then not what a restore of the whole
component (or of another namespace) may use: it would bring back only that narrower part and
report success. So 'latest' is the newest backup whose scope covers the scope asked for: the
restore's options when they narrow it, else the whole component as the target is configured.
When no backup covers it, NotFound names the newer narrower ones (restorable by id).

Manifests written before backups recorded their scope (postgres `selected`, kubernetes `scope`)
are taken as covering what their target asked for: their content is still checked where it
names what it holds (databases, namespaces, vhosts, steps).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from blocks.store import StoreBlock
from tasks.components import kubernetes as velero
from tasks.components import postgres_pitr, volumes
from tasks.components.registry import load, load_target
from tasks.errors import BackupError, BadInput, ConfigurationError
from tasks.models import Manifest
from tasks.operations.recovery import PointGap, RecoveryPoint
from tasks.storage.catalog import LATEST, backup_at_or_before, get_backup, latest_backup

Gap = Callable[[Manifest], str | None]
PITR = "postgres-pitr"


def _options(component: str, options: Any) -> Any:
    if options is None or isinstance(options, dict):
        from tasks.verbs import restore_options  # verbs imports prefect tasks: only when needed

        return restore_options(component, options)
    return options


def _postgres(manifest: Manifest, target: Any, options: Any) -> str | None:
    held = set(manifest.engine.get("databases") or {})
    wanted = options.databases or target.databases
    if wanted:
        missing = sorted(set(wanted) - held)
        return f"holds databases {sorted(held)}, not {missing}" if missing else None
    selected = manifest.engine.get("selected")
    return f"holds only databases {sorted(selected)}, not every database" if selected else None


def _resources(names: list[str]) -> set[str]:
    return {velero.canonical_resource(n) for n in names}


def _every(spec: dict[str, Any]) -> bool:
    return not spec["include_namespaces"] or "*" in spec["include_namespaces"]


def _namespace_gap(
    manifest: Manifest, rec: dict[str, Any] | None, want: dict[str, Any], options: Any
) -> str | None:
    held = set(manifest.engine.get("namespaces") or [])
    if options.namespaces is None and _every(want):  # every namespace (but the target's exclusions)
        if rec is not None and not _every(rec):
            return f"holds only namespaces {sorted(held)}, not every namespace"
        extra = sorted(set((rec or {}).get("exclude_namespaces", [])) - set(want["exclude_namespaces"]))
        return f"excludes namespaces {extra}" if extra else None
    if options.namespaces:  # named by the restore: the backup must hold them (as it ran)
        missing = sorted(set(options.namespaces) - held)
        return f"does not hold namespaces {missing}" if missing else None
    wanted = {n for n in want["include_namespaces"] if n not in want["exclude_namespaces"]}
    if rec is not None and _every(rec):
        missing = sorted(wanted & set(rec["exclude_namespaces"]))
    else:  # a namespace it named that did not exist when it ran is still in its scope
        if rec is not None:
            held |= {n for n in rec["include_namespaces"] if n not in rec["exclude_namespaces"]}
        missing = sorted(wanted - held)
    return f"does not hold namespaces {missing}" if missing else None


def _velero(manifest: Manifest, options: Any, base: Any) -> str | None:
    """`base`: the BackupSpec the target makes (what 'the whole component' is)."""
    rec = manifest.engine.get("scope")
    want = base.model_dump()
    if gap := _namespace_gap(manifest, rec, want, options):
        return gap
    if rec is None:
        return None
    selector = {**want["label_selector"], **(options.label_selector or {})}
    narrower = {k: v for k, v in rec["label_selector"].items() if selector.get(k) != v}
    if narrower:
        return f"holds only objects labelled {narrower}"
    wanted = _resources(options.resources or want["include_resources"])
    if rec["include_resources"] and (not wanted or not wanted <= _resources(rec["include_resources"])):
        return f"holds only resources {rec['include_resources']}"
    skipped = sorted(_resources(rec["exclude_resources"]) - _resources(want["exclude_resources"]))
    return f"excludes resources {skipped}" if skipped else None


def _rabbitmq(manifest: Manifest, target: Any, options: Any) -> str | None:
    if manifest.engine.get("scope", "broker") == "broker":
        return None
    held = set(manifest.engine.get("vhosts") or [])
    wanted = [options.vhost] if options.vhost else target.vhosts
    if not wanted:
        return f"holds only vhosts {sorted(held)}, not the whole broker"
    missing = sorted(set(wanted) - held)
    return f"does not hold vhosts {missing}" if missing else None


def _app_state(manifest: Manifest, target: Any, options: Any) -> str | None:
    held = {o.name for o in manifest.objects}
    missing = sorted(set(options.steps or [s.name for s in target.steps]) - held)
    return f"does not hold steps {missing}" if missing else None


# component -> (target, its parsed RestoreOptions) -> Gap. Components not here (etcd, PITR) back
# up the whole server: always covered, and their options are not parsed (a PITR restore's
# `directory` is required, and a drill or plan asks for 'latest' with none).
SCOPED: dict[str, Callable[[Any, Any], Gap]] = {
    "postgres": lambda target, opts: lambda m: _postgres(m, target, opts),
    "kubernetes": lambda target, opts: partial(_velero, options=opts, base=velero.BackupSpec.of(target)),
    "volumes": lambda target, opts: partial(_velero, options=opts, base=volumes.spec(target)),
    "rabbitmq": lambda target, opts: lambda m: _rabbitmq(m, target, opts),
    "app-state": lambda target, opts: lambda m: _app_state(m, target, opts),
}


def scope_gap(component: str, target: Any, options: Any = None) -> Gap:
    """manifest -> None when it covers what a restore of `component` into `target` with `options`
    asks for, else what it lacks."""
    if component not in SCOPED:
        load(component)  # an unknown component is BadInput here, not a silent 'covered'
        return lambda m: None
    return SCOPED[component](target, _options(component, options))


def backup_for(
    store: StoreBlock,
    backup_id: str,
    component: str,
    target: Any,
    options: Any = None,
    at: datetime | None = None,
) -> Manifest:
    """The backup a restore of `component` into `target` uses: by id as given (its scope is the
    caller's choice), or 'latest' (or the newest at or before `at`) that covers the scope asked."""
    gap = scope_gap(component, target, options)
    if at is not None:
        if backup_id not in ("", LATEST):
            raise BadInput(f"give a backup id ({backup_id}) or a time ({at.isoformat()}), not both")
        return backup_at_or_before(store, component, at, gap)
    if backup_id == LATEST:
        return latest_backup(store, component, gap)
    return get_backup(store, backup_id, component)


def recovery_point_gap(store: StoreBlock, targets: dict[str, Any] | None) -> PointGap:
    """A recovery point -> None when each member covers its component's whole target (as a
    restore of that component would ask), else what the narrower ones lack. A component whose
    target is not configured is skipped (its step is); an unreadable member is left to the
    damage checks that read it."""
    gaps: dict[str, Gap | None] = {}

    def gap_of(component: str) -> Gap | None:
        if component not in gaps:
            try:
                gaps[component] = scope_gap(component, load_target(component, (targets or {}).get(component)))
            except ConfigurationError:
                gaps[component] = None
        return gaps[component]

    def point_gap(rp: RecoveryPoint) -> str | None:
        lacks = []
        for component, member in rp.members.items():
            if (gap := gap_of(component)) is None:
                continue
            try:
                why = gap(get_backup(store, member.backup_id, component))
            except BackupError:
                continue
            if why:
                lacks.append(f"its {component} backup {member.backup_id} {why}")
        return "; ".join(lacks) or None

    return point_gap


def backup_and_target(
    store: StoreBlock, backup_id: str, component: str, target_ref: Any, options: Any = None
) -> tuple[Manifest, Any]:
    """The backup a restore uses, and its target block. By id: the backup first (a malformed or
    unknown id is refused before any target is loaded); 'latest': the target first, since it says
    what 'latest' must cover, but a component with no backup at all says that first."""
    if backup_id != LATEST:
        manifest = get_backup(store, backup_id, component)
        return manifest, load_target(component, target_ref)
    try:
        target = load_target(component, target_ref)
    except ConfigurationError:
        latest_backup(store, component)  # NotFound when there is nothing to restore at all
        raise
    if component == PITR and options is not None:
        # the newest base backup may end after the recovery target: 'latest' is the newest one
        # that reaches it, as pitr_postgres chooses (the newest was refused after the checklist)
        chosen = postgres_pitr.base_backup_for(target, store, _options(component, options))
        return get_backup(store, chosen, component), target
    return backup_for(store, LATEST, component, target, options), target
