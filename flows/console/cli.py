"""`klb`'s arguments and which function answers each command."""

from __future__ import annotations

import argparse
import json
import sys

from blocks.store import StoreBlock
from tasks.components.registry import SPECS
from tasks.errors import BadInput

COMPONENTS = list(SPECS)


def given(value: str) -> str:
    """A flag's value as typed: an empty one (`--target "$UNSET"`) is refused, never read as
    'not given', which would fall back to the default target, store or options."""
    if not value.strip():
        raise argparse.ArgumentTypeError(
            "must not be empty (an unset shell variable?): give a value, or leave the flag out "
            "for the default"
        )
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="klb",
        description="knative-lambda-backup console: status, backups, verify, restore, drill, plan, backup",
        epilog="exit codes: 0 ok, 1 a problem found (overdue, damaged, failed), 2 could not run",
    )
    p.add_argument("--store", type=given, help="store block name (default: $KLB_STORE, else the local store)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the flows' log lines")
    sub = p.add_subparsers(dest="command", required=True)

    st = sub.add_parser("status", help="every component against its schedule; last verification and drill")
    st.add_argument("components", nargs="*", choices=COMPONENTS + [[]], metavar="component")

    bk = sub.add_parser("backups", help="list or describe backups").add_subparsers(
        dest="action", required=True
    )
    ls = bk.add_parser("list", help="backups, oldest first: id, kind, time, age, size, status, expiry")
    ls.add_argument("component", nargs="?", choices=COMPONENTS)
    ds = bk.add_parser("describe", help="one backup: objects, engine facts, fingerprint, run")
    ds.add_argument("backup_id", type=given)

    vf = sub.add_parser("verify", help="read a backup (default: the newest of each component) back")
    vf.add_argument("backup_id", nargs="?", type=given)

    def deployable(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--deployment",
            action="store_true",
            help="trigger the deployment on the Prefect server and follow it",
        )
        cmd.add_argument("--idempotency-key", type=given, help="default: the command and the current minute")

    bu = sub.add_parser("backup", help="back up one component (or --all) now")
    who = bu.add_mutually_exclusive_group(required=True)
    who.add_argument("component", nargs="?", choices=COMPONENTS)
    who.add_argument("--all", action="store_true", help="every configured component")
    bu.add_argument("--target", type=given, help="target block name (default: the component's default)")
    deployable(bu)

    rs = sub.add_parser("restore", help="restore one component from a backup (verified first)")
    rs.add_argument("component", choices=COMPONENTS)
    rs.add_argument("backup_id", nargs="?", default="latest", type=given)
    rs.add_argument("--target", type=given, help="target block name (default: the component's default)")
    rs.add_argument(
        "--options", type=given, help="restore options as JSON (strict: unknown fields are refused)"
    )
    rs.add_argument("--yes", action="store_true", help="required: a restore changes the target")
    deployable(rs)

    dr = sub.add_parser("drill", help="restore drill into isolation; RTO/RPO")
    dr.add_argument("components", nargs="*", choices=COMPONENTS + [[]], metavar="component")
    deployable(dr)

    pl = sub.add_parser("plan", help="dry run: what a restore would do")
    pl.add_argument("components", nargs="*", choices=COMPONENTS + [[]], metavar="component")
    src = pl.add_mutually_exclusive_group()
    src.add_argument("--recovery-point", type=given, help="'latest' or a recovery point id")
    src.add_argument("--backup-id", type=given)
    return p


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def dispatch(args: argparse.Namespace, store: StoreBlock) -> tuple[str, bool]:
    from flows.console import backups, run, status

    ref = args.store  # flows load the store themselves, by the same rules
    if getattr(args, "idempotency_key", None) and not args.deployment:
        # run here, a command runs once per call: a key it ignored would promise a retry attaches
        raise BadInput(
            "--idempotency-key applies to a triggered deployment only: add --deployment, or drop "
            "the key (run here, the command runs each time it is given)"
        )
    if args.command == "status":
        return status.status(store, args.components or None)
    if args.command == "backups":
        if args.action == "list":
            return backups.list_text(store, [args.component] if args.component else COMPONENTS), True
        return backups.describe_text(store, args.backup_id), True
    if args.command == "verify":
        return backups.verify_text(store, args.backup_id)
    if args.command == "plan":
        return run.plan(ref, args.recovery_point, args.backup_id, args.components)
    if args.command == "backup":
        if args.all and args.target:  # backup-all has a target per component, never one for all
            raise BadInput(
                "--target names one component's target; --all backs up each component to its "
                "default target: drop --target, or back the component up on its own with it"
            )
        if args.deployment:
            name = run.BACKUP_ALL if args.all else run.BACKUP_ONE.format(component=args.component)
            params = {"store": ref} if ref else {}
            if args.target:
                params["target"] = args.target
            return run.trigger(name, params, args.idempotency_key, _say)
        return run.backup(ref, None if args.all else args.component, args.target)
    if args.command == "restore":
        if not args.yes:
            raise BadInput(
                f"a restore changes {args.component}: check `klb plan {args.component}` and repeat with --yes"
            )
        options = _options(args.options)
        if args.deployment:
            params = {"component": args.component, "backup_id": args.backup_id, "options": options}
            params |= {k: v for k, v in (("store", ref), ("target", args.target)) if v}
            return run.trigger(run.RESTORE, params, args.idempotency_key, _say)
        return run.restore(ref, args.component, args.backup_id, args.target, options)
    if args.command == "drill":
        if args.deployment:
            params = {k: v for k, v in (("store", ref), ("components", args.components or None)) if v}
            return run.trigger(run.DRILL, params, args.idempotency_key, _say)
        return run.drill(ref, args.components)
    raise BadInput(f"unknown command {args.command!r}")


def _options(raw: str | None) -> dict | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadInput(
            f'--options is not JSON ({exc}): give an object, e.g. \'{{"steps": ["files"]}}\''
        ) from None
    if not isinstance(value, dict):
        raise BadInput("--options must be a JSON object")
    return value
