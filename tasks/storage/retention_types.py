"""Retention's vocabulary: the policy it applies and the plan it returns, a decision per backup
and per orphan directory (storage/retention.py decides; retention_locks.py and
retention_report.py read the plan)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, Field

from tasks.models import Manifest
from tasks.table import policy as table_policy


class RetentionPolicy(BaseModel):
    component: str
    retention: timedelta = Field(description="age (from the source snapshot time) a backup is kept")
    keep_last_good: int = Field(default=1, ge=1, description="newest good backups kept whatever their age")
    keep_daily: int = Field(default=0, ge=0, description="GFS: newest good backup of each of N days")
    keep_weekly: int = Field(default=0, ge=0, description="GFS: ... of each of N ISO weeks")
    keep_monthly: int = Field(default=0, ge=0, description="GFS: ... of each of N months")
    velero_owned: bool = Field(
        default=False, description="Velero holds the data: its TTL and garbage collection expire it"
    )
    recovery_window: bool = Field(
        default=False,
        description="PITR base backups: also keep the newest good one older than `retention`, so "
        "recovery reaches any time within `retention` (not just from the oldest backup inside it)",
    )
    orphan_grace: timedelta = Field(
        default=timedelta(hours=24), description="objects with no manifest younger than this may be in flight"
    )
    special_retention: timedelta | None = Field(
        default=None, description="how long safety and forensic backups are kept (default: `retention`)"
    )

    @classmethod
    def from_table(cls, component: str, **overrides) -> RetentionPolicy:
        from tasks.components.registry import spec  # a leaf: rows of data, no component code

        return cls(
            component=component,
            retention=table_policy(component).retention,
            velero_owned=spec(component).velero_owned,
            recovery_window=spec(component).recovery_window,
            **overrides,
        )


class Action(StrEnum):
    keep = "keep"
    delete = "delete"


class _Held(BaseModel):
    """What S3 Object Lock says of a deletion retention left alone (storage/retention_locks.py)."""

    locked_until: AwareDatetime | None = Field(default=None, description="S3 Object Lock: kept until then")
    legal_hold: bool = Field(default=False, description="S3 legal hold: kept until someone lifts it")

    def lock_note(self) -> str | None:
        """Why a lock keeps it, for reports: the legal hold or the retain-until (None: no lock)."""
        if self.legal_hold:
            return "legal hold (until lifted)"
        return f"{self.locked_until:%Y-%m-%d %H:%M}Z" if self.locked_until else None


class Decision(_Held):
    id: str
    source_time: AwareDatetime
    kind: str = "on-demand"
    good: bool
    action: Action
    reason: str
    protected: bool = Field(
        default=False,
        description="kept whatever its age (rules 2, 3, 5): an engine's own expiry must not take it",
    )
    keys: list[str] = Field(default_factory=list, description="keys deleted with it (manifest first)")


class OrphanDecision(_Held):
    backup_dir: str
    keys: list[str]
    started_at: AwareDatetime | None
    action: Action
    reason: str


class RetentionPlan(BaseModel):
    component: str
    now: AwareDatetime
    policy: RetentionPolicy
    recovery_point: str | None = None
    decisions: list[Decision]
    orphans: list[OrphanDecision] = Field(default_factory=list)
    missing: dict[str, list[str]] = Field(
        default_factory=dict, description="backup id -> its objects the listing lacks (damaged)"
    )

    @property
    def deletions(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == Action.delete]

    def protected(self, manifests: Iterable[Manifest]) -> list[Manifest]:
        """Those of `manifests` kept whatever their age (`Decision.protected`): what an engine's
        own expiry (Velero's TTL, an S3 Object Lock date) must be told to keep."""
        ids = {d.id for d in self.decisions if d.protected}
        return [m for m in manifests if m.id in ids]

    @property
    def orphan_deletions(self) -> list[OrphanDecision]:
        return [o for o in self.orphans if o.action == Action.delete]

    def counts(self) -> dict[str, int]:
        return {
            "backups": len(self.decisions),
            "keep": len(self.decisions) - len(self.deletions),
            "delete": len(self.deletions),
            "orphan_dirs_deleted": len(self.orphan_deletions),
            "orphan_dirs_left": len(self.orphans) - len(self.orphan_deletions),
        }
