"""Turn on the backup schedule of each component that has a target, and only those.

    PREFECT_API_URL=... python scripts/enable_schedules.py            # after `prefect deploy --all`
    python scripts/enable_schedules.py --check                         # show, change nothing

prefect.yaml ships every component's backup schedule inactive: a cluster without, say, etcd
access (EKS, GKE, AKS) must not get a failing run every hour. This script activates the schedule
of `backup-<component>` when a target block of that component's type exists on the server
(tasks/components/registry.py names the type), and pauses it otherwise. Enabling a component
later is one step: create its target block (scripts/create_blocks.py), then run this again.
Run it again after every `prefect deploy --all` (deploy resets schedules to prefect.yaml's).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402

from tasks.components.registry import spec  # noqa: E402

BACKUP_ENTRYPOINT = "flows/backup.py:backup_component"


def scheduled_backups() -> dict[str, str]:
    """deployment name -> component, for the scheduled backups of prefect.yaml."""
    deps = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    return {
        d["name"]: d["parameters"]["component"]
        for d in deps
        if d["entrypoint"] == BACKUP_ENTRYPOINT and d.get("schedules")
    }


async def plan_and_apply(check: bool) -> dict[str, bool]:
    wanted: dict[str, bool] = {}
    async with get_client() as client:
        for name, component in scheduled_backups().items():
            slug = spec(component).target_block
            try:
                targets = await client.read_block_documents_by_type(slug, limit=1, include_secrets=False)
            except ObjectNotFound:
                targets = []
            try:
                dep = await client.read_deployment_by_name(f"backup-component/{name}")
            except ObjectNotFound:
                raise SystemExit(
                    f"deployment backup-component/{name} is not on the server: run "
                    "`prefect --no-prompt deploy --all` first"
                ) from None
            active = bool(targets)
            wanted[name] = active
            print(f"{name}: {'active' if active else 'paused'} ({'a' if active else 'no'} {slug} block)")
            if not check:
                for schedule in dep.schedules:
                    if schedule.active != active:
                        await client.update_deployment_schedule(dep.id, schedule.id, active=active)
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="show what would change, change nothing")
    args = parser.parse_args(argv)
    asyncio.run(plan_and_apply(args.check))
    return 0


if __name__ == "__main__":
    sys.exit(main())
