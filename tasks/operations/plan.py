"""Restore plans (dry runs): what would be restored, where, in what order, what is there now and
whether it would be replaced or skipped, and how long it should take. Changes nothing."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import AwareDatetime, BaseModel, Field

from blocks.store import StoreBlock
from tasks.components.registry import SPECS, dr_order, load, load_target
from tasks.errors import BadInput, ConfigurationError, NotFound
from tasks.markdown import cell
from tasks.models import Manifest
from tasks.operations.drills import duration
from tasks.operations.recovery import get_recovery_point, member_manifests
from tasks.operations.scope import backup_for, recovery_point_gap
from tasks.storage.catalog import LATEST, get_backup
from tasks.storage.layout import DRILLS, RESTORE_RECORD, RESTORES
from tasks.storage.records import iter_records

# Full cluster restore (runbook "Scenario 1"): the order things come back in, from the registry's
# rows, then a final verification step. Components outside it (postgres-pitr) come last.
DR_STEPS: list[tuple[str, str | None]] = [(s.dr_step, s.name) for s in SPECS.values() if s.dr_step] + [
    ("verify", None)
]
PLAN_ONLY = {s.name for s in SPECS.values() if s.plan_only}
ORDER = dr_order()

Action = Literal["create", "replace", "skip", "plan only"]

# what a postgres restore with the globals does to the live server besides its databases
ROLES_APPLIED = (
    "; before the cut-over the backup's roles are applied to the whole server (attributes, "
    "passwords, memberships of every role, other databases' included)"
)
ROLES_CREATED = "; roles the load needs that the server lacks are created on it (bare) and kept"

# what a restore of each component really does to its target (its module's `restore`)
MODES: dict[str, str] = {
    "kubernetes": "in place: a Velero Restore into the namespaces (existing objects per the policy)",
    "volumes": "in place: the claims are deleted and restored with their data",
    "postgres": "aside, then cut over: restored into a side database, checked, renamed over "
    "(the old database is kept for rollback_postgres)" + ROLES_APPLIED,
    "etcd": "plan only: the snapshot and the restore commands are written out for a reviewed swap",
    "rabbitmq": "in place: the definitions are imported over the current ones, then checked",
    "app-state": "in place: each step's restore command replaces the current state (no aside copy)",
    "postgres-pitr": "new instance: a new PostgreSQL paused at the target; promote_pitr is separate",
}


def action_of(component: str, options: Any = None) -> str:
    """What a restore of `component` with these RestoreOptions does: the options that change the
    kind of action (not only its scope) say so, so an approval is never of the default action."""
    if component == "etcd" and getattr(options, "execute_swap", False):
        return (
            "THE SWAP ITSELF (execute_swap): kube-apiserver and etcd are stopped on this node, the "
            "data dir is replaced by the restored one, both are restarted"
        )
    if component == "postgres" and options is not None:
        return _postgres_action(options)
    if component == "rabbitmq" and getattr(options, "into_vhost", None):
        return (
            f"aside: vhost {options.vhost!r} of the backup as {options.into_vhost!r} (into_vhost), "
            "without its shovels, federation upstreams and federation policies; no other vhost is touched"
        )
    if component == "postgres-pitr" and options is not None and _pitr_to_the_end(options):
        return (
            "new instance, recovered to the end of the archived WAL and promoted at once (no target: "
            "writable, not paused); the source is not touched"
        )
    if component == "kubernetes" and options is not None:
        return _velero_action(options)
    return MODES.get(component, "the component's own restore")


def _postgres_action(options: Any) -> str:
    """Its databases aside (and cut over), and what the globals change on the live server: the
    component applies them when asked, else on a restore of every database (applies_globals)."""
    given = getattr(options, "include_globals", None)
    with_globals = given if given is not None else not getattr(options, "databases", None)
    if not getattr(options, "cut_over", True):
        text = (
            "aside only (cut_over=False): restored into a side database and checked; nothing is renamed over"
        )
        return text + (ROLES_CREATED if with_globals else "")
    text = MODES["postgres"].removesuffix(ROLES_APPLIED)
    return text + (ROLES_APPLIED if with_globals else "")


def _velero_action(options: Any) -> str:
    """A Kubernetes restore as its options make it: which policy applies to what exists (the
    default leaves it: a restore of objects that all exist brings nothing back), and which
    namespaces go aside."""
    if str(getattr(options, "existing_resource_policy", "none")) == "update":
        text = (
            "in place: a Velero Restore into the namespaces; objects that exist are OVERWRITTEN "
            "(policy update)"
        )
    else:
        text = (
            "in place: a Velero Restore into the namespaces; objects that exist are LEFT AS THEY ARE "
            "(policy none): only missing ones come back"
        )
    moved = ", ".join(f"{s} as {d}" for s, d in (options.namespace_mapping or {}).items() if s != d)
    if moved:
        text += (
            f"; but namespaces {moved}: aside, into new namespaces (namespace_mapping), their "
            "sources not touched"
        )
    return text


def _pitr_to_the_end(options: Any) -> bool:
    """A PITR with no target (or 'latest'): PostgreSQL ends recovery itself, no pause."""
    when = getattr(options, "target_time", None)
    named = getattr(options, "target_lsn", None) or getattr(options, "target_name", None)
    return not named and (when is None or (isinstance(when, str) and when.strip().lower() == "latest"))


class PlanStep(BaseModel):
    order: int
    component: str
    backup_id: str | None = None
    source_time: AwareDatetime | None = None
    age_hours: float | None = None
    size: int | None = None
    target: str = Field(description="where it would go")
    current_state: dict[str, Any] | None = None
    action: Action
    reason: str
    mode: str = Field(default="", description="what a restore of this component does to its target")
    estimated_seconds: float | None = None
    estimate_basis: str = ""


class RestorePlan(BaseModel):
    source: str = Field(description="recovery point or backup id the plan restores from")
    created_at: AwareDatetime
    steps: list[PlanStep]

    @property
    def estimated_seconds(self) -> float:
        return sum(s.estimated_seconds or 0 for s in self.steps if s.action in ("create", "replace"))

    def step(self, component: str) -> PlanStep:
        for s in self.steps:
            if s.component == component:
                return s
        raise KeyError(component)


def _target_label(target: Block) -> str:
    name = getattr(target, "_block_document_name", None)
    kind = type(target).__name__
    return f"{kind} '{name}'" if name else f"{kind} (unsaved / from the environment)"


Sample = tuple[float, int | None]  # (seconds, raw bytes) of one past restore or drill


def restore_history(store: StoreBlock) -> dict[str, list[Sample]]:
    """(seconds, bytes) of past restores and drills of each component, oldest first."""
    out: dict[str, list[tuple[datetime, Sample]]] = {}
    for _, rec in iter_records(store, RESTORES, "/" + RESTORE_RECORD):
        # a rollback_postgres swap (a rename, under a second) says nothing of how long a load takes
        if rec.get("via") == "rollback-postgres":
            continue
        if rec.get("status") in ("restored", "rolled back") and rec.get("duration_seconds") is not None:
            sample = (float(rec["duration_seconds"]), rec.get("size"))
            out.setdefault(rec["component"], []).append((_when(rec.get("started_at")), sample))
    for _, rec in iter_records(store, DRILLS):
        for comp in rec.get("components", []):
            if comp.get("status") == "verified" and comp.get("rto_seconds") is not None:
                sample = (float(comp["rto_seconds"]), comp.get("size"))
                out.setdefault(comp["component"], []).append((_when(rec.get("started_at")), sample))
    return {c: [s for _, s in sorted(v, key=lambda x: x[0])] for c, v in out.items()}


def _when(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else datetime.min.replace(tzinfo=UTC)


def estimate(manifest: Manifest, history: list[Sample]) -> tuple[float, str]:
    """From measured throughput (bytes/s) of the last five restores/drills of the component,
    scaled to this backup's size; else their median duration; else the backup's own duration."""
    sized = [(sec, n) for sec, n in history if n and sec > 0][-5:]
    if sized and manifest.raw_size:
        rate = statistics.median(n / sec for sec, n in sized)
        return manifest.raw_size / rate, (
            f"{manifest.raw_size} bytes at {rate / 1024:.1f} KiB/s, the median throughput of "
            f"the last {len(sized)} restores/drills"
        )
    if history:
        recent = [sec for sec, _ in history[-5:]]
        return statistics.median(recent), f"median of the last {len(recent)} restores/drills"
    took = (manifest.finished_at - manifest.started_at).total_seconds()
    return took, "no restore history: the backup's own duration"


def _is_empty(state: dict[str, Any]) -> bool:
    return not any(v not in (None, [], {}, "", 0) for v in state.values())


def _decide(manifest: Manifest, state: dict[str, Any]) -> tuple[Action, str]:
    current = state.get("fingerprint")
    if current is not None and manifest.fingerprint is not None and current == manifest.fingerprint:
        return "skip", "already identical: the current fingerprint equals the backup's"
    if _is_empty(state):
        return "create", "nothing there now"
    if current is None or manifest.fingerprint is None:
        return "replace", "the current state would be replaced (no fingerprint tells if it is identical)"
    return "replace", "the current state differs from the backup (fingerprints differ) and would be replaced"


def target_label(target: Block) -> str:
    return _target_label(target)


def plan_step(
    order: int,
    component: str,
    manifest: Manifest | None,
    target_ref: str | Block | None,
    history: dict[str, list[float]],
    missing: str | None = None,
) -> PlanStep:
    """One line of the plan. Reads the current state; changes nothing."""
    base: dict[str, Any] = {"order": order, "component": component}
    if manifest is not None:
        base |= {
            "backup_id": manifest.id,
            "source_time": manifest.source_time,
            "age_hours": round(manifest.age() / 3600, 3),
            "size": manifest.raw_size,
        }
    try:
        module = load(component)
        target = load_target(component, target_ref)
    except ConfigurationError as exc:
        return PlanStep(**base, target="-", action="skip", reason=f"not configured: {exc}")
    if manifest is None:
        return PlanStep(**base, target=_target_label(target), action="skip", reason=missing or "no backup")
    seconds, basis = estimate(manifest, history.get(component, []))
    base |= {
        "target": _target_label(target),
        "mode": MODES.get(component, ""),
        "estimated_seconds": seconds,
        "estimate_basis": basis,
    }
    try:
        state = module.describe_current_state(target)
    except Exception as exc:
        state = None
        action, reason = "replace", f"current state unknown ({type(exc).__name__}: {str(exc)[:200]})"
    else:
        action, reason = _decide(manifest, state)
    if component in PLAN_ONLY:
        action, reason = "plan only", "etcd: the snapshot and its restore commands are written out"
    return PlanStep(**base, current_state=state, action=action, reason=reason)


def _each(
    store: StoreBlock,
    components: list[str],
    targets: dict[str, str | Block] | None,
    at: datetime | None,
    label: str,
) -> tuple[dict, dict]:
    """Each component's 'latest' (or newest at or before `at`) that covers its whole target:
    operations/scope.py, the resolution every restore uses."""
    found, missing = {}, {}
    for name in components:
        try:
            target = load_target(name, (targets or {}).get(name))
            found[name] = backup_for(store, LATEST, name, target, at=at)
        except ConfigurationError as exc:
            missing[name] = f"not configured: {exc}"
        except NotFound as exc:
            missing[name] = f"no backup {label}: {exc}"
    return found, missing


def resolve_source(
    store: StoreBlock,
    recovery_point: str | None,
    backup_id: str | None,
    components: list[str] | None = None,
    at: datetime | None = None,
    targets: dict[str, str | Block] | None = None,
) -> tuple[str, dict[str, Manifest], dict[str, str]]:
    """(source label, component -> manifest, component -> why it has no backup). Every way a
    restore is asked for: a recovery point ('latest' or an id), a backup id, 'latest' of the
    listed components, or the newest backup of each at or before a time."""
    given = [x for x in (recovery_point, backup_id, at) if x]
    if len(given) > 1:
        raise BadInput("give one of: a recovery point, a backup id ('latest' or an id), or a time")
    if backup_id == LATEST:
        if not components:
            raise BadInput("backup_id='latest' needs components=[...]: say whose latest backup to plan")
        found, missing = _each(store, components, targets, None, "yet")
        return "latest backups", found, missing
    if backup_id:
        manifest = get_backup(store, backup_id)
        return manifest.id, {manifest.component: manifest}, {}
    if at:
        if at.tzinfo is None:
            raise BadInput(f"time {at.isoformat()} has no time zone: give it with one (e.g. +00:00)")
        found, missing = _each(store, components or ORDER, targets, at, f"at or before {at}")
        return f"backups at or before {at.isoformat()}", found, missing
    if recovery_point:
        rp = get_recovery_point(store, recovery_point, recovery_point_gap(store, targets))
        missing = {c: f"failed in recovery point {rp.id}: {e}" for c, e in rp.failed.items()}
        return rp.id, member_manifests(store, rp), missing
    raise BadInput(
        "say what to restore: a recovery point ('latest' or an id), a backup id, "
        "backup_id='latest' with components, or a time"
    )


def build_plan(
    store: StoreBlock,
    recovery_point: str | None = None,
    backup_id: str | None = None,
    components: list[str] | None = None,
    targets: dict[str, str | Block] | None = None,
    at: datetime | None = None,
) -> RestorePlan:
    unknown = [c for c in components or [] if c not in SPECS]
    if unknown:
        raise BadInput(f"unknown components {unknown}: choose from {', '.join(SPECS)}")
    source, manifests, missing = resolve_source(store, recovery_point, backup_id, components, at, targets)
    if backup_id and backup_id != LATEST:
        names = list(manifests)
        if components and not set(names) & set(components):
            raise BadInput(
                f"backup {backup_id} is of {names[0]}, not of components {components}: "
                "leave components out with a backup id, or give the id of one of theirs"
            )
    else:
        names = [c for c in ORDER if c in (components or ORDER)]
    history = restore_history(store)
    steps = [
        plan_step(
            i + 1,
            name,
            manifests.get(name),
            (targets or {}).get(name),
            history,
            missing.get(name, f"not in {source}"),
        )
        for i, name in enumerate(names)
    ]
    return RestorePlan(source=source, created_at=datetime.now(UTC), steps=steps)


def plan_markdown(plan: RestorePlan, title: str = "Restore plan") -> str:
    """One short section per component (lists wrap; wide tables do not)."""
    acting = [s for s in plan.steps if s.action in ("create", "replace")]
    out = [
        f"# {title}: {plan.source}",
        "",
        f"Dry run made {plan.created_at:%Y-%m-%d %H:%M:%S} UTC; it changed nothing. "
        f"{len(acting)} of {len(plan.steps)} components would be restored, estimated "
        f"{duration(plan.estimated_seconds)} in all.",
    ]
    for s in plan.steps:
        out += ["", f"### {s.order}. {s.component}: {s.action}", ""]
        if s.backup_id:
            age = "" if s.age_hours is None else f", {s.age_hours:.2f} h old"
            out.append(f"- backup: `{s.backup_id}`{age}, {s.size} bytes raw")
        out.append(f"- into: {s.target}")
        if s.current_state is not None:
            out.append(f"- there now: {cell(short_state(s.current_state))}")
        if s.mode and s.action != "skip":
            out.append(f"- how: {s.mode}")
        out.append(f"- why: {cell(s.reason)}")
        if s.estimated_seconds is not None:
            out.append(f"- estimate: {duration(s.estimated_seconds)} ({s.estimate_basis})")
    return "\n".join(out) + "\n"


def short_state(state: dict[str, Any]) -> str:
    """The current state in one line, full (it is what an operator decides on)."""
    return ", ".join(f"{k}={v}" for k, v in state.items()) or "empty"
