"""Turn on the backup schedule of each component that has a target, and only those.

    PREFECT_API_URL=... python scripts/enable_schedules.py            # after `prefect deploy --all`
    python scripts/enable_schedules.py --check                         # show, change nothing

prefect.yaml ships every component's backup schedule inactive: a cluster without, say, etcd
access (EKS, GKE, AKS) must not get a failing run every hour. This script activates the schedule
of `backup-<component>` when the flow pods will find that component's target, and pauses it
otherwise. The pods find it by the block name their ConfigMap klb-config gives (KLB_<COMPONENT>_TARGET):
the script loads each target exactly as a scheduled run does, under the environment of
`--config` (default deployments/k8s/config.yaml, the ConfigMap `kubectl apply -k` installs), so a
block under a name klb-config does not give never turns a schedule on. Enabling a component
later is one step: create its target block under that name (scripts/create_blocks.py), then run
this again. Run it again after every `prefect deploy --all` (deploy resets schedules to prefect.yaml's).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402

from tasks.components.registry import load_target  # noqa: E402
from tasks.errors import ConfigurationError  # noqa: E402

BACKUP_ENTRYPOINT = "flows/backup.py:backup_component"
CONFIG = ROOT / "deployments" / "k8s" / "config.yaml"


def scheduled_backups() -> dict[str, str]:
    """deployment name -> component, for the scheduled backups of prefect.yaml."""
    deps = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    return {
        d["name"]: d["parameters"]["component"]
        for d in deps
        if d["entrypoint"] == BACKUP_ENTRYPOINT and d.get("schedules")
    }


@contextmanager
def pod_environment(config: Path):
    """os.environ as a flow pod has it: klb-config's data, none of this shell's own KLB_ settings."""
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if n.startswith("KLB_")]:
            del os.environ[name]
        os.environ.update({str(k): str(v) for k, v in data.items()})
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def decide(config: Path) -> dict[str, tuple[bool, str]]:
    """deployment name -> (active, why): active when the component's target loads as a
    scheduled run in a flow pod loads it."""
    wanted: dict[str, tuple[bool, str]] = {}
    with pod_environment(config):
        for name, component in scheduled_backups().items():
            try:
                target = load_target(component, None)
            except ConfigurationError as exc:
                wanted[name] = (False, str(exc).splitlines()[0])
            else:
                wanted[name] = (True, f"target {target._block_document_name!r}")
    return wanted


async def apply(wanted: dict[str, tuple[bool, str]]) -> None:
    async with get_client() as client:
        for name, (active, _) in wanted.items():
            try:
                dep = await client.read_deployment_by_name(f"backup-component/{name}")
            except ObjectNotFound:
                raise SystemExit(
                    f"deployment backup-component/{name} is not on the server: run "
                    "`prefect --no-prompt deploy --all` first"
                ) from None
            for schedule in dep.schedules:
                if schedule.active != active:
                    await client.update_deployment_schedule(dep.id, schedule.id, active=active)


def plan_and_apply(check: bool, config: Path = CONFIG) -> dict[str, bool]:
    wanted = decide(config)
    for name, (active, why) in wanted.items():
        print(f"{name}: {'active' if active else 'paused'} ({why})")
    if not check:
        asyncio.run(apply(wanted))
    return {name: active for name, (active, _) in wanted.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="show what would change, change nothing")
    parser.add_argument(
        "--config",
        type=Path,
        default=CONFIG,
        help="the ConfigMap klb-config the flow pods get (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    plan_and_apply(args.check, args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
