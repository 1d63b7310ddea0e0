"""The backup table (backup-table.yaml) as typed data."""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from tasks.errors import NotFound

# The table users edit is the repository's backup-table.yaml; tasks/backup-table.yaml links to it,
# so an installed wheel (which holds packages, not the repository's root) carries it as package data.
TABLE_PATH = Path(__file__).resolve().parent / "backup-table.yaml"


class Policy(BaseModel):
    component: str
    title: str
    every_hours: int = Field(gt=0)
    cron: str
    retention_days: int = Field(gt=0)
    method: str

    @property
    def interval(self) -> timedelta:
        return timedelta(hours=self.every_hours)

    @property
    def retention(self) -> timedelta:
        return timedelta(days=self.retention_days)


@cache
def backup_table() -> dict[str, Policy]:
    data = yaml.safe_load(TABLE_PATH.read_text())
    return {row["component"]: Policy(**row) for row in data["components"]}


def policy(component: str) -> Policy:
    try:
        return backup_table()[component]
    except KeyError:
        raise NotFound(f"component {component!r} is not in {TABLE_PATH.name}") from None
