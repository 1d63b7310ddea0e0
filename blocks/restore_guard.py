"""What a restore must pass before it may change anything: the maintenance window, who is told,
and whether a human must approve (the runbook's Pre-Restore Checklist)."""

from __future__ import annotations

from datetime import UTC, datetime, time

from pydantic import Field

from blocks.strict import StrictBlock, StrictModel


class MaintenanceWindow(StrictModel):
    """Days and hours (UTC) when restores may run. `end` before `start` spans midnight."""

    days: list[int] = Field(
        default_factory=lambda: list(range(7)), description="0=Monday .. 6=Sunday (UTC, of `start`)"
    )
    start: time = Field(description="UTC, e.g. '02:00'")
    end: time = Field(description="UTC, e.g. '04:00'")

    def contains(self, when: datetime) -> bool:
        when = when.astimezone(UTC)
        now = when.time().replace(tzinfo=None)
        if self.start <= self.end:
            return when.weekday() in self.days and self.start <= now < self.end
        if now >= self.start:  # spans midnight: before midnight, today's window
            return when.weekday() in self.days
        return now < self.end and (when.weekday() - 1) % 7 in self.days  # after: yesterday's

    def describe(self) -> str:
        names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        days = ",".join(names[d] for d in sorted(self.days))
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} UTC"


class RestoreGuard(StrictBlock):
    _block_type_name = "KLB Restore Guard"
    _block_type_slug = "klb-restore-guard"
    _description = "Pre-restore checklist settings: maintenance window, notifications, approval."

    window: MaintenanceWindow | None = Field(
        default=None, description="outside it a restore refuses unless forced; unset = any time (warned)"
    )
    notify: list[str] = Field(
        default_factory=list,
        description="notification blocks to tell, as 'block-type-slug/name' (e.g. 'slack-webhook/oncall')",
    )
    require_approval: bool = Field(default=False, description="pause for a human before the restore")
    approval_timeout_seconds: int = Field(default=900, ge=1, description="no answer in time = refused")
