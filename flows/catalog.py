"""Command line view of the catalog: `python -m flows.catalog list [component]`, `... show <id>`.

Uses the same store resolution as the flows: --store NAME (a store block), $KLB_STORE, or the
embedded local store ($KLB_STORE_DIR).
"""

from __future__ import annotations

import argparse
import sys

from flows.common import load_store
from tasks.components.registry import SPECS
from tasks.errors import BackupError
from tasks.storage.catalog import get_backup, list_backups
from tasks.storage.health import health_of


def status_of(manifest, known) -> str:
    """What is known: the sweep's (or a failed read's) last finding, else the write's check."""
    if known is not None:
        return known.describe()
    if manifest.verified_at:
        return f"verified {manifest.verified_at:%Y-%m-%d %H:%M:%SZ} (when written)"
    return "unverified"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.catalog", description=__doc__)
    parser.add_argument("--store", help="store block name (default: $KLB_STORE or the local store)")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="backups, oldest first")
    ls.add_argument("component", nargs="?", choices=list(SPECS))
    show = sub.add_parser("show", help="one backup's manifest")
    show.add_argument("backup_id")
    args = parser.parse_args(argv)
    try:
        store = load_store(args.store)
        if args.command == "show":
            print(get_backup(store, args.backup_id).model_dump_json(indent=2))
            return 0
        print(f"# {store.location}")
        print("id\tkind\tsource time\tbytes\tstatus")
        for component in [args.component] if args.component else list(SPECS):
            known = health_of(store, component)
            listed = set()
            for m in list_backups(store, component):
                listed.add(m.id)
                print(
                    f"{m.id}\t{m.kind.value}\t{m.source_time.isoformat()}\t{m.size}\t"
                    f"{status_of(m, known.get(m.id))}"
                )
            for backup_id, finding in sorted(known.items()):  # damaged beyond reading its manifest
                if backup_id not in listed and finding.status == "damaged":
                    print(f"{backup_id}\t?\t?\t?\t{finding.describe()}")
        return 0
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
