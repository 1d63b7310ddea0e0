"""`klb`: the operator's console. Quiet on stdout (the answer only), a header line naming the
store, and exit codes a script can use:

    0  all good
    1  a problem was found: a component overdue or damaged or whose last drill failed, a backup
       that does not verify, a flow that failed
    2  the command could not run: bad input, a store or target not configured (the message says
       what to do)

The store comes from --store NAME (a store block), $KLB_STORE, or the embedded local store
($KLB_STORE_DIR), like the flows'. `python -m flows.catalog` is an alias of `klb backups`.
"""

from __future__ import annotations

import logging
import os
import sys

OK, PROBLEM, UNUSABLE = 0, 1, 2
# the commands that run a flow here or trigger a deployment: they need the Prefect API
RUN_FLOWS = ("backup", "restore", "drill", "plan")


class _QuietEventsWorker(logging.Filter):
    """Prefect's events worker warns "Still processing items" while it drains at exit: noise on
    every short command, and nothing the operator can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Still processing items" not in record.getMessage()


def _quiet_prefect(verbose: bool) -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # a busy machine
    import prefect  # noqa: F401 - configures Prefect's loggers, then we add our filter

    for name in ("prefect._internal.concurrency", "prefect._internal", "prefect"):
        logging.getLogger(name).addFilter(_QuietEventsWorker())
    for handler in logging.getLogger().handlers + logging.getLogger("prefect").handlers:
        handler.addFilter(_QuietEventsWorker())


def _store_source(ref: str | None) -> str:
    if ref:
        return "--store"
    if os.environ.get("KLB_STORE"):
        return "$KLB_STORE"
    return "default local store" + (" ($KLB_STORE_DIR)" if os.environ.get("KLB_STORE_DIR") else "")


def main(argv: list[str] | None = None) -> int:
    from flows.console.cli import parser

    args = parser().parse_args(argv)
    _quiet_prefect(args.verbose)
    from flows.console.cli import dispatch
    from flows.console.run import api_problem, lost_api
    from tasks.errors import BackupError

    try:
        from tasks.storage.stores import load_store

        named_store = args.store or os.environ.get("KLB_STORE")
        # a store block, a flow run and a deployment all live on the Prefect API: ask it first
        if (named_store or args.command in RUN_FLOWS) and (problem := api_problem()):
            print(f"klb: error: {problem}", file=sys.stderr)
            return UNUSABLE
        store = load_store(args.store)
        print(f"store: {store.location} ({_store_source(args.store)})", flush=True)
        text, ok = dispatch(args, store)
    except BackupError as exc:
        print(f"klb: error: {exc}", file=sys.stderr)
        return UNUSABLE
    except Exception as exc:
        if not lost_api(exc):
            raise  # a bug: its traceback is what a report needs
        print(
            f"klb: error: lost the Prefect API ({type(exc).__name__}): check the server; a flow run "
            "it had started shows its state there",
            file=sys.stderr,
        )
        return UNUSABLE
    if text:
        print(text, flush=True)
    return OK if ok else PROBLEM
