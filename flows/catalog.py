"""The old catalog command, kept as an alias: `python -m flows.catalog list [component]` is
`klb backups list [component]`, `... show ID` is `klb backups describe ID` (flows/console)."""

from __future__ import annotations

import sys

from flows.console import main as klb


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    store = []
    while args[:1] == ["--store"] and len(args) > 1:
        store, args = args[:2], args[2:]
    verb = {"list": ["backups", "list"], "show": ["backups", "describe"]}.get(args[0] if args else "")
    if verb is None:
        print(
            "usage: python -m flows.catalog [--store NAME] list [component] | show ID  (see: klb)",
            file=sys.stderr,
        )
        return 2
    return klb([*store, *verb, *args[1:]])


if __name__ == "__main__":
    sys.exit(main())
