"""What a restore must pass before it may change anything: the maintenance window, who is told,
and whether a human must approve (the runbook's Pre-Restore Checklist)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from pydantic import Field, field_validator, model_validator

from blocks.strict import StrictBlock, StrictModel


class MaintenanceWindow(StrictModel):
    """Days and hours (UTC) when restores may run. `end` before `start` spans midnight."""

    days: list[int] = Field(
        default_factory=lambda: list(range(7)), description="0=Monday .. 6=Sunday (UTC, of `start`)"
    )
    start: time = Field(description="UTC, e.g. '02:00'")
    end: time = Field(description="UTC, e.g. '04:00'")

    @field_validator("days")
    @classmethod
    def _weekdays(cls, days: list[int]) -> list[int]:
        # [] never opens and 7 or -1 name no weekday (7 crashed describe(), -1 read as Sunday
        # and never opened): a window that can never open refuses every restore, unexplained
        if not days:
            raise ValueError("days=[] names no day: leave days out for every day, or name some (0=Monday)")
        wrong = sorted({d for d in days if not 0 <= d <= 6})
        if wrong:
            raise ValueError(f"days {wrong} are not weekdays: use 0=Monday .. 6=Sunday")
        return sorted(set(days))

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: time) -> time:
        # '02:00Z' is a natural way to write UTC; kept aware, every check of the window failed
        # with a TypeError (aware against naive). Another offset would shift the days: refused
        if value.tzinfo is None:
            return value
        if value.utcoffset() != timedelta(0):
            raise ValueError(f"{value.isoformat()} is not UTC: give the window's times in UTC ('02:00')")
        return value.replace(tzinfo=None)

    @model_validator(mode="after")
    def _some_length(self) -> MaintenanceWindow:
        if self.start == self.end:
            raise ValueError(
                f"start and end are both {self.start:%H:%M}: the window would never open; "
                "give an end after the start (an end before it spans midnight)"
            )
        return self

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
