"""The main job, end to end on one machine: sample systems with data (PITR's WAL archive on
moto's S3 server, on loopback), a backup of every component into the embedded local store, then a
restore drill that proves the backups restore, with its report and `klb status`.

    bash scripts/demo.sh      (or: PYTHONPATH=. .venv/bin/python -m sandbox.demo)

Sample services run on 127.0.0.1 under .run/demo/services and are stopped at the end. Backups go
to .run/demo/store (KLB_STORE_DIR), fresh each run so the drill's RPO speaks of this run.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run" / "demo"
RUN_DIR.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("KLB_STORE_DIR", str(RUN_DIR / "store"))
os.environ.setdefault("PREFECT_HOME", str(RUN_DIR / "prefect-home"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # a busy machine
os.environ.setdefault("KLB_PITR_DIR", str(RUN_DIR / "pitr"))  # the drill's recovered instance

from prefect.blocks.core import Block  # noqa: E402

from flows.backup import backup_all  # noqa: E402
from flows.console.status import status  # noqa: E402
from flows.drill import drill_report_text, last_drill_report, restore_drill  # noqa: E402
from sandbox.samples import DEMO_SETUPS  # noqa: E402
from tasks.storage.stores import load_store  # noqa: E402


def main() -> int:
    services_dir = RUN_DIR / "services"
    for stale in (services_dir, Path(os.environ["KLB_STORE_DIR"]), Path(os.environ["KLB_PITR_DIR"])):
        shutil.rmtree(stale, ignore_errors=True)
    services_dir.mkdir(parents=True)
    store = load_store()
    with ExitStack() as stack:
        targets: dict[str, Block] = {}
        for component, setup in DEMO_SETUPS.items():
            print(f"demo: starting the {component} sample ...", flush=True)
            targets[component] = setup(stack, services_dir)
        print(f"demo: backing up {', '.join(targets)} into {store.location} ...", flush=True)
        backups = backup_all(targets=targets)
        print("demo: restore drill (every backup restored into isolation and verified) ...", flush=True)
        drill = restore_drill(targets=targets, return_state=True)
    print(f"\nBackups (store: {store.location}):")
    for name, backup in backups.backups.items():
        print(f"  {name:14} {backup.id}  {backup.size:>9} bytes stored")
    for name, reason in backups.not_configured.items():
        print(f"  {name:14} not backed up: {reason.splitlines()[0]}")
    print("\n" + (drill_report_text(drill.result()) if drill.is_completed() else last_drill_report()))
    text, _ = status(store)
    print(f"\n$ KLB_STORE_DIR={os.environ['KLB_STORE_DIR']} .venv/bin/klb status\n{text}")
    print("\nAsk any time: .venv/bin/klb status | backups list | backups describe ID | verify (klb --help)")
    return 0 if drill.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
