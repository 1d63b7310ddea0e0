"""prefect.yaml as data, and the checks that tie it to backup-table.yaml (used by unit and e2e tests)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from tasks.table import Policy, backup_table

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "prefect.yaml"
BACKUP_ENTRYPOINT = "flows/backup.py:backup_component"
DRILL_ENTRYPOINT = "flows/drill.py:restore_drill"
START = datetime(2026, 1, 1, tzinfo=UTC)  # fixed: the checks must not depend on today


def load_yaml(path: Path = PREFECT_YAML) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def deployments(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    return load_yaml(path)["deployments"]


def scheduled_backups(deps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in deps if d["entrypoint"] == BACKUP_ENTRYPOINT and d.get("schedules")]


def next_runs(schedule: dict[str, Any], n: int, start: datetime = START) -> list[datetime]:
    """The next `n` runs as the Prefect server's scheduler computes them."""
    from prefect.server.schemas.schedules import CronSchedule

    cron = CronSchedule(
        cron=schedule["cron"], timezone=schedule.get("timezone"), day_or=schedule.get("day_or", True)
    )
    # plain datetimes: the server hands back pendulum ones, whose differences are not timedeltas
    return [datetime.fromtimestamp(d.timestamp(), UTC) for d in asyncio.run(cron.get_dates(n=n, start=start))]


def interval_problems(schedule: dict[str, Any], every: timedelta, n: int = 50) -> list[str]:
    runs = next_runs(schedule, n)
    gaps = {b - a for a, b in zip(runs, runs[1:], strict=False)}
    return [] if gaps == {every} else [f"runs {gaps} apart, table says {every}"]


def schedule_mismatches(deps: list[dict[str, Any]], table: dict[str, Policy]) -> list[str]:
    """Every way prefect.yaml's scheduled backups and the backup table can disagree."""
    problems: list[str] = []
    by_component: dict[str, list[dict]] = {}
    for d in scheduled_backups(deps):
        by_component.setdefault((d.get("parameters") or {}).get("component"), []).append(d)
    for component, found in by_component.items():
        if component not in table:
            names = [d["name"] for d in found]
            problems.append(f"{names}: component {component!r} is not in backup-table.yaml")
    for component, policy in table.items():
        found = by_component.get(component, [])
        if len(found) != 1:
            problems.append(f"{component}: {len(found)} scheduled backup deployments, want exactly 1")
            continue
        dep = found[0]
        schedules = dep["schedules"]
        if len(schedules) != 1:
            problems.append(f"{dep['name']}: {len(schedules)} schedules, want 1")
            continue
        (schedule,) = schedules
        if schedule.get("timezone") != "UTC":
            problems.append(f"{dep['name']}: timezone {schedule.get('timezone')!r}, want explicit UTC")
        if schedule.get("cron") != policy.cron:
            problems.append(f"{dep['name']}: cron {schedule.get('cron')!r}, table says {policy.cron!r}")
        problems += [f"{dep['name']}: {p}" for p in interval_problems(schedule, policy.interval)]
    return problems


def first_monday_problems(runs: list[datetime]) -> list[str]:
    return [
        f"{r.isoformat()} is not a first Monday at 02:00 UTC"
        for r in runs
        if not (r.weekday() == 0 and r.day <= 7 and (r.hour, r.minute, r.second) == (2, 0, 0))
    ]


def table() -> dict[str, Policy]:
    return backup_table()
