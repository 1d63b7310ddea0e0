"""Restore drill records, RPO arithmetic, health checks and the drill report.

The drill flow (flows/drill.py) runs each component's `drill` hook; this module holds what it
measures and keeps: one JSON record per drill at <prefix>/drills/<YYYY-MM-DD>/<drill-id>.json,
so RTO/RPO trends can be read later (`list_drill_records`).
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field, model_validator

from blocks.store import StoreBlock
from blocks.strict import StrictModel
from tasks.markdown import cell
from tasks.models import Manifest
from tasks.proc import run
from tasks.storage.layout import DRILLS, layout
from tasks.storage.records import iter_records, put_record

SPACE = DRILLS


def new_drill_id(now: datetime | None = None) -> str:
    """Lower-case letters and digits only, so every hook can derive a database name
    (drill_<id>), a namespace (restore-drill-<id>) or a vhost (drill-<id>) from it."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%d%H%M%S}{secrets.token_hex(3)}"


class Status(StrEnum):
    verified = "verified"
    failed = "FAILED"
    not_covered = "not covered"


class HealthCheck(StrictModel):
    """An HTTP or command check run during the drill. With `component`, it runs right after that
    component's drill restore (inside its RTO); without, after all components (overall RTO).
    Commands get $KLB_DRILL_ID in their environment."""

    name: str
    component: str | None = None
    url: str | None = Field(default=None, description="GET this URL; healthy when the status matches")
    expect_status: int = 200
    command: list[str] | None = Field(default=None, min_length=1, description="argv; exit 0 = healthy")
    env: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=30, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        if (self.url is None) == (self.command is None):
            raise ValueError(f"health check {self.name!r}: give exactly one of url or command")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"health check {self.name!r}: url must be http(s)")
        return self


class CheckResult(BaseModel):
    name: str
    component: str | None
    ok: bool
    detail: str


def run_health_check(check: HealthCheck, drill_id: str) -> CheckResult:
    try:
        if check.url is not None:
            try:
                with urllib.request.urlopen(check.url, timeout=check.timeout_seconds) as resp:  # noqa: S310
                    status = resp.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            ok = status == check.expect_status
            detail = f"HTTP {status} (expected {check.expect_status})"
        else:
            env = {**check.env, "KLB_DRILL_ID": drill_id}
            out = run(check.command, env, None, check.timeout_seconds, f"health check {check.name}")
            ok, detail = True, (out.strip().splitlines() or ["exit 0"])[-1][:200]
    except Exception as exc:
        ok, detail = False, f"{type(exc).__name__}: {str(exc)[:300]}"
    return CheckResult(name=check.name, component=check.component, ok=ok, detail=detail)


class ComponentDrill(BaseModel):
    component: str
    status: Status
    configured: bool = Field(default=True, description="False: no target configured, so not drilled")
    reason: str | None = None
    size: int | None = Field(default=None, description="raw bytes of the backup drilled")
    backup_id: str | None = None
    source_time: AwareDatetime | None = None
    restore_started: AwareDatetime | None = None
    verified_at: AwareDatetime | None = Field(default=None, description="verified healthy")
    rto_seconds: float | None = None
    rto_phases: dict[str, float] = Field(
        default_factory=dict,
        description="seconds per step of the RTO: restore (checked), cleanup, health checks",
    )
    rpo_age_seconds: float | None = Field(default=None, description="drill start - source time")
    worst_gap_seconds: float | None = Field(default=None, description="worst gap between good backups")
    rpo_target_hours: float | None = None
    production_unchanged: bool | None = None
    checks: dict[str, Any] = Field(default_factory=dict)
    health: list[CheckResult] = Field(default_factory=list)


class DrillRecord(BaseModel):
    schema_version: int = 1
    id: str
    started_at: AwareDatetime
    finished_at: AwareDatetime
    recovery_point: str | None = None
    rto_target_minutes: float
    rpo_target_hours: float
    rpo_window_hours: float
    components: list[ComponentDrill]
    health: list[CheckResult] = Field(default_factory=list, description="drill-wide checks")
    rto_seconds: float | None = Field(description="first restore start to last verified healthy")
    rpo_seconds: float | None = Field(description="oldest restored data's age at drill start")
    worst_gap_seconds: float | None
    failures: list[str]
    key: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def coverage(self) -> str:
        """'N of M components verified, K not configured': what the verdict stands on."""
        verified = sum(c.status is Status.verified for c in self.components)
        absent = sum(not c.configured for c in self.components)
        return f"{verified} of {len(self.components)} components verified, {absent} not configured"

    @property
    def headline(self) -> str:
        return f"{'PASSED' if self.passed else 'FAILED'}: {self.coverage}"

    def component(self, name: str) -> ComponentDrill:
        for c in self.components:
            if c.component == name:
                return c
        raise KeyError(name)


def rpo_figures(
    manifest: Manifest, history: list[Manifest], drill_time: datetime, window: timedelta
) -> tuple[float, float]:
    """(age of `manifest` at drill time, worst gap between consecutive good backups in the window).

    Good = its objects were read back and checked when written (verified_at set). The gap from
    the newest good backup to the drill time counts too: that is the exposure right now.
    """
    age = (drill_time - manifest.source_time).total_seconds()
    good = sorted(m.source_time for m in history if m.verified_at is not None and m.source_time <= drill_time)
    start = drill_time - window
    points = good + [drill_time]
    gaps = [(b - a).total_seconds() for a, b in zip(points, points[1:], strict=False) if b >= start]
    return age, max(gaps, default=age)


def drill_key(store: StoreBlock, drill_id: str, started: datetime) -> str:
    return layout(store).drill_key(drill_id, started)


def save_drill_record(store: StoreBlock, record: DrillRecord) -> DrillRecord:
    key = drill_key(store, record.id, record.started_at)
    record = record.model_copy(update={"key": key})
    put_record(store, key, record)
    return record


def list_drill_records(store: StoreBlock) -> list[DrillRecord]:
    """Every stored drill, oldest first: the trend of RTO and RPO over time."""
    out = [DrillRecord.model_validate(data) for _, data in iter_records(store, SPACE)]
    return sorted(out, key=lambda r: r.started_at)


# --- the report -------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """0.42 s / 12.5 min / 7.25 h: readable at every scale a drill meets."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _as_record(result: DrillRecord | dict[str, Any]) -> DrillRecord:
    return result if isinstance(result, DrillRecord) else DrillRecord.model_validate(result)


def drill_report_text(result: DrillRecord | dict[str, Any]) -> str:
    """Plain-text drill report: one row per component, then the totals against the targets."""
    rec = _as_record(result)
    rows = [("component", "result", "RTO", "RPO (age)", "worst gap", "detail")]
    for c in rec.components:
        rows.append(
            (
                c.component,
                c.status.value if c.configured else "not configured",
                duration(c.rto_seconds),
                duration(c.rpo_age_seconds),
                duration(c.worst_gap_seconds),
                c.reason or c.backup_id or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"Restore drill {rec.id} ({rec.started_at:%Y-%m-%d %H:%M:%S} UTC): {rec.headline}"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        f"RTO {duration(rec.rto_seconds)} (target < {rec.rto_target_minutes:g} min); "
        f"RPO {duration(rec.rpo_seconds)}, worst gap {duration(rec.worst_gap_seconds)} "
        f"(target < {rec.rpo_target_hours:g} h)"
    )
    phases = [f"  {c.component}: {rto_phases_text(c)}" for c in rec.components if c.rto_phases]
    lines += ["Where the RTO went:", *phases] if phases else []
    for check in rec.health:
        lines.append(f"health check {check.name}: {'ok' if check.ok else 'FAILED'} ({check.detail})")
    lines += [f"FAILED: {f}" for f in rec.failures]
    return "\n".join(lines)


def drill_report_markdown(rec: DrillRecord) -> str:
    out = [
        f"# Restore drill {rec.id}: {rec.headline}",
        "",
        f"Started {rec.started_at.isoformat()}, finished {rec.finished_at.isoformat()}"
        + (f", recovery point `{rec.recovery_point}`" if rec.recovery_point else ""),
        "",
        "| | measured | target | |",
        "|---|---|---|---|",
        f"| RTO | {duration(rec.rto_seconds)} | < {rec.rto_target_minutes:g} min | "
        f"{_ok(rec.rto_seconds, rec.rto_target_minutes * 60)} |",
        f"| RPO (age of restored data) | {duration(rec.rpo_seconds)} | < {rec.rpo_target_hours:g} h | "
        f"{_ok(rec.rpo_seconds, rec.rpo_target_hours * 3600)} |",
        f"| worst gap between good backups ({rec.rpo_window_hours:g} h window) | "
        f"{duration(rec.worst_gap_seconds)} | < {rec.rpo_target_hours:g} h | "
        f"{_ok(rec.worst_gap_seconds, rec.rpo_target_hours * 3600)} |",
        "",
        "| component | result | backup | RTO | RPO (age) | worst gap | RPO target | production unchanged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    details: list[str] = []
    for c in rec.components:
        prod = {True: "yes", False: "NO (changed)", None: "-"}[c.production_unchanged]
        status = SHOWN[c.status] if c.configured else "not configured"
        target = "-" if c.rpo_target_hours is None else f"< {c.rpo_target_hours:g} h"
        checked = _component_checks(c)
        # less the component's own phases, shown where the RTO went (rto_phases_text)
        shown = [k for k, v in checked.items() if k != "seconds" or not _is_phases(v)]
        detail = c.reason or ", ".join(f"{k}: ok" for k in shown) or ""
        out.append(
            f"| {c.component} | {status} | {c.backup_id or '-'} | {duration(c.rto_seconds)} | "
            f"{duration(c.rpo_age_seconds)} | {duration(c.worst_gap_seconds)} | "
            f"{target} | {prod} |"
        )
        details.append(f"- **{c.component}**: {status}" + (f": {cell(detail)}" if detail else ""))
        if c.rto_phases:
            details.append(f"  - where the RTO went: {cell(rto_phases_text(c))}")
    out += ["", "## Each component", ""] + details
    checks = rec.health + [h for c in rec.components for h in c.health]
    if checks:
        out += ["", "| health check | component | result | detail |", "|---|---|---|---|"]
        out += [
            f"| {h.name} | {h.component or '(all)'} | {'ok' if h.ok else 'FAILED'} | {cell(h.detail)} |"
            for h in checks
        ]
    if rec.failures:
        out += ["", "## Why it failed", ""] + [f"- {f}" for f in rec.failures]
    if rec.key:
        out += ["", f"Record: `{rec.key}`"]
    return "\n".join(out) + "\n"


def _ok(value: float | None, limit: float) -> str:
    if value is None:
        return "-"
    return "ok" if value < limit else "MISSED"


SHOWN = {Status.verified: "verified", Status.failed: "FAILED", Status.not_covered: "⚠ not covered"}


def rto_phases_text(c: ComponentDrill) -> str:
    """`restore 12.3 s (app: load 9.5 s, fingerprint+post_data 2.1 s), health checks 0.2 s`: the
    drill's steps, with the phases a component reports for each thing it restored (PostgreSQL:
    per database) or for itself (PITR, etcd: `fetch+untar 3.1 s, verify 0.4 s, ...`)."""
    checks = _component_checks(c)
    inner = [
        f"{name}: " + _phases(check["seconds"])
        for name, check in checks.items()
        if isinstance(check, dict) and _is_phases(check.get("seconds"))
    ]
    if _is_phases(own := checks.get("seconds")):
        inner.insert(0, _phases(own))
    parts = []
    for step, seconds in c.rto_phases.items():
        text = f"{step} {seconds:.1f} s"
        if step == "restore" and inner:
            text += " (" + "; ".join(inner) + ")"
        parts.append(text)
    return ", ".join(parts)


def _component_checks(c: ComponentDrill) -> dict[str, Any]:
    """What the component's drill reported under `checks` (a record may hold anything there)."""
    checks = c.checks.get("checks")
    return checks if isinstance(checks, dict) else {}


def _is_phases(value: Any) -> bool:
    """A component's `seconds`: phase -> seconds, at least one."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value.values())
    )


def _phases(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
