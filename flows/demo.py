"""The main job, end to end on one machine: throwaway services with sample data, a backup of
every component into the embedded local store, then a restore drill with its report.

    make demo            (or: PYTHONPATH=. .venv/bin/python -m flows.demo)

Services run on 127.0.0.1 under .run/demo/ and are stopped at the end; the backups stay in
.run/demo/store (KLB_STORE_DIR) so later runs build a history.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run" / "demo"
RUN_DIR.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("KLB_STORE_DIR", str(RUN_DIR / "store"))
os.environ.setdefault("PREFECT_HOME", str(RUN_DIR / "prefect-home"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from prefect.blocks.core import Block  # noqa: E402

from blocks.app_state import AppStateStep, AppStateTarget  # noqa: E402
from flows.backup import backup_all  # noqa: E402
from flows.common import load_store  # noqa: E402
from flows.maintenance import verify_backups  # noqa: E402


def app_state(stack: ExitStack, workdir: Path) -> Block:
    """A directory of 'application state' captured by tar."""
    src = workdir / "app-state"
    (src / "sessions").mkdir(parents=True, exist_ok=True)
    (src / "sessions" / "active.json").write_text('{"active_sessions": 1284}\n')
    (src / "feature-flags.yaml").write_text("cold_start_cache: true\nmax_concurrency: 64\n")
    restored = workdir / "app-state-restored"
    restored.mkdir(exist_ok=True)
    return AppStateTarget(
        steps=[
            AppStateStep(
                name="app-files",
                backup_command=["tar", "-C", str(src), "-cf", "-", "."],
                restore_command=["tar", "-C", str(restored), "-xf", "-"],
            )
        ]
    )


# component -> sets up its sample service and returns its target block
DEMO_SETUPS: dict[str, Callable[[ExitStack, Path], Block]] = {
    "app-state": app_state,
}

from flows import demo_etcd_rabbitmq  # noqa: E402

DEMO_SETUPS.update(demo_etcd_rabbitmq.DEMO_SETUPS)


def main() -> int:
    services_dir = RUN_DIR / "services"
    shutil.rmtree(services_dir, ignore_errors=True)
    services_dir.mkdir(parents=True)
    with ExitStack() as stack:
        targets: dict[str, Block] = {}
        for component, setup in DEMO_SETUPS.items():
            print(f"demo: starting {component} sample ...", flush=True)
            targets[component] = setup(stack, services_dir)
        print(f"demo: backing up {', '.join(targets)} ...", flush=True)
        result = backup_all(components=list(targets), targets=targets)
        verify_backups(components=list(targets))
    store = load_store()
    print(f"\nBackups (store: {store.location}):")
    for name, backup in result.backups.items():
        print(f"  {name:14} {backup.id}  {backup.size:>10} bytes  {backup.location}")
    print("\nList them any time with: PYTHONPATH=. .venv/bin/python -m flows.catalog list")
    return 0


if __name__ == "__main__":
    sys.exit(main())
