"""WAL fetched ahead for a recovering server: one long-lived fetcher, not one process per segment.

`barman-cloud-wal-restore` as the `restore_command` starts a Python process per WAL segment
(about 0.7 s each, of which 0.02 s is the transfer): replaying a day of WAL would spend most of
the RTO starting interpreters. Here one fetcher process (barman's own library, in barman's
Python) lists the archive once and downloads the segments recovery will ask for, a few at a
time, into a spool directory next to the data directory; the `restore_command` is a small shell
script that moves the next segment out of the spool, waiting for it if the fetcher has it in
hand. Anything else (timeline history files, the segment after the archive's end, a segment
asked again) it asks of the same running fetcher, which answers with the file or "not
archived"; `barman-cloud-wal-restore` runs only once the fetcher is gone or fails. The spool
holds at most AHEAD segments: nothing of database size lands on local disk. WAL is checked by
PostgreSQL itself (CRC on every record).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blocks.pitr import PitrTarget
from tasks.components.postgres_pitr import files
from tasks.components.postgres_pitr.engines import BarmanCloud, ambient_identity
from tasks.components.postgres_pitr.instance import as_user

log = logging.getLogger(__name__)
AHEAD = 8  # segments fetched ahead of replay (16 MiB each by default)
JOBS = 4  # downloads at once
SPOOL = "wal-spool"  # beside the data directory: the segments fetched ahead, and the markers
PLAN = "plan"  # the segments the fetcher will bring, one name a line
DONE = "done"  # the fetcher ended (every planned segment is in the spool or marked failed)
RESTORE_LOG = "wal-restore.log"  # one line per file the server asked for, and how it got it (_HOW)
WAIT_STEPS = 6000  # x 0.05 s: how long the restore_command waits for a planned segment

_FETCHER = r"""
import os, re, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from barman.cloud import CloudBackupCatalog, CloudWalDownloader
from barman.cloud_providers.aws_s3 import S3CloudInterface
from barman.clients.cloud_cli import OperationErrorExit
from barman.xlog import is_wal_file
url, server, endpoint, spool, first, ahead, jobs = sys.argv[1:8]
ahead, jobs = int(ahead), int(jobs)
# the parent closes our stdin when it is done with us, or dies: either way, stop
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
def mark(name, text=""):
    tmp = os.path.join(spool, "." + name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, os.path.join(spool, name))
def fetch(name, no_partial=True):
    tmp = os.path.join(spool, "." + name + ".part")
    down.download_wal(name, tmp, no_partial, 0)
    os.replace(tmp, os.path.join(spool, name))
def planned(name):
    try:
        fetch(name)
    except BaseException as exc:
        mark(name + ".failed", type(exc).__name__)
ASKABLE = re.compile(r"[0-9A-F]{24}(\.partial)?|[0-9A-F]{8}\.history")
SAFE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.]*")  # what restore_wal.sh asks about: no path
def answer_one(want):
    os.replace(want, want + ".taken")  # FileNotFoundError: nothing asked
    with open(want + ".taken") as fh:
        name = fh.read().strip()
    if not SAFE.fullmatch(name):
        return
    if not ASKABLE.fullmatch(name):
        mark(name + ".error", "not a WAL file name")
        return
    try:
        fetch(name, no_partial=False)
    except OperationErrorExit:
        mark(name + ".missing")  # not in the archive
    except BaseException as exc:
        mark(name + ".error", type(exc).__name__)
def answer():
    # anything else the server asks for (history files, the end of the archive, a segment asked
    # again): one request at a time, as barman-cloud-wal-restore would answer it, minus its start
    want = os.path.join(spool, "want")
    while True:
        try:
            answer_one(want)
        except FileNotFoundError:
            time.sleep(0.02)
        except Exception as exc:  # one request gone wrong must not end the answering
            print("answering:", repr(exc), file=sys.stderr, flush=True)
            time.sleep(0.02)
try:
    iface = S3CloudInterface(url=url, endpoint_url=endpoint or None, jobs=1)
    down = CloudWalDownloader(iface, server, spool_dir=spool)
    names = sorted(CloudBackupCatalog(iface, server).get_wal_paths())
    # the segments of the base backup's timeline from its first one on, in replay order
    plan = [n for n in names if is_wal_file(n) and n[:8] == first[:8] and n >= first]
    threading.Thread(target=answer, daemon=True).start()
    mark("plan", "".join(n + "\n" for n in plan))
    held = []
    with ThreadPoolExecutor(jobs) as pool:
        for name in plan:
            while True:  # at most `ahead` segments fetched or in flight, not yet replayed
                held = [(n, f) for n, f in held if not f.done() or os.path.exists(os.path.join(spool, n))]
                if len(held) < ahead:
                    break
                time.sleep(0.05)
            held.append((name, pool.submit(planned, name)))
except BaseException:
    mark("done")
    raise
threading.Event().wait()  # every planned segment is in the spool or failed: answer until EOF
"""

_RESTORE_SCRIPT = """#!/bin/sh
# knative-lambda-backup PITR: the next WAL file from the prefetch spool, else barman-cloud
spool={spool}
f="$1"; p="$2"
# wait only for a planned file the fetcher may still bring: not one handed over already (the
# server asks for some again), not once the fetcher ended (done: marked by us if it died)
if grep -qxF -- "$f" "$spool/{plan}" 2>/dev/null && [ ! -f "$spool/$f.given" ]; then
  i=0
  while [ ! -f "$spool/$f" ] && [ ! -f "$spool/$f.failed" ] && [ ! -f "$spool/{done}" ] \\
        && [ "$i" -lt {steps} ]; do
    sleep 0.05; i=$((i + 1))
  done
fi
if [ -f "$spool/$f" ] && mv -f -- "$spool/$f" "$p"; then
  : > "$spool/$f.given"
  echo "spool $f" >> {log}; exit 0
fi
# anything else: asked of the running fetcher (no process started), which answers with the
# file, or that the archive does not hold it (the server then takes it as the end of WAL)
case "$f" in
  .*|*[!0-9A-Za-z.]*) ;;
  *) if [ -f "$spool/{plan}" ] && [ ! -f "$spool/{done}" ]; then
    rm -f -- "$spool/$f.missing" "$spool/$f.error"
    echo "$f" > "$spool/.want.tmp" && mv -f -- "$spool/.want.tmp" "$spool/want"
    i=0
    while [ ! -f "$spool/$f" ] && [ ! -f "$spool/$f.missing" ] && [ ! -f "$spool/$f.error" ] \\
          && [ ! -f "$spool/{done}" ] && [ "$i" -lt {steps} ]; do
      sleep 0.05; i=$((i + 1))
    done
    if [ -f "$spool/$f" ] && mv -f -- "$spool/$f" "$p"; then
      echo "fetcher $f" >> {log}; exit 0
    fi
    if [ -f "$spool/$f.missing" ]; then
      echo "missing $f" >> {log}; exit 1
    fi
  fi ;;
esac
echo "fallback $f" >> {log}
exec env {fallback}
"""


def restore_script(fallback: str, spool: Path, log: Path) -> str:
    """The restore_command script; `fallback` is the engine's own command, ending in `%f %p`."""
    if not fallback.endswith(" %f %p"):
        raise ValueError(f"unexpected restore_command {fallback!r}")
    return _RESTORE_SCRIPT.format(
        spool=shlex.quote(str(spool)),
        log=shlex.quote(str(log)),
        plan=PLAN,
        done=DONE,
        steps=WAIT_STEPS,
        fallback=fallback.removesuffix(" %f %p") + ' "$f" "$p"',
    )


@contextmanager
def wal_spool(
    engine: object,
    target: PitrTarget,
    root: Path,
    credentials: Path,
    first_segment: str | None,
    owner: str | None,
) -> Iterator[str]:
    """Start the fetcher; yield the restore_command to configure. The fetcher is stopped and
    the spool removed on exit. An engine other than barman-cloud gets its own command."""
    # the fallback's own spool is ours too: created only with the fetcher, in the instance
    # directory, which nobody else can write to (it only ever holds what the fetcher brought)
    fallback = engine.restore_command(target, credentials, root / SPOOL)  # type: ignore[attr-defined]
    if not isinstance(engine, BarmanCloud) or not first_segment:
        yield fallback
        return
    spool = root / SPOOL
    spool.mkdir(mode=0o700)
    script = root / "restore_wal.sh"
    script.write_text(restore_script(fallback, spool, root / RESTORE_LOG))
    script.chmod(0o700)
    runas: list[str] = []
    if owner:
        import shutil

        shutil.chown(spool, owner)
        shutil.chown(script, owner)
        files.touch(root / RESTORE_LOG)  # the script writes it, and the instance directory is ours
        files.give(root / RESTORE_LOG, owner)
        # the fetcher writes into a directory the owner can write to: as the owner, never as us
        # (root following a link planted there would write wherever it points)
        runas = as_user(owner)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # no keys anywhere: the pod's identity (IRSA, EKS Pod Identity), as the server has it
        **ambient_identity(target),
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),  # no secret in the environment
        **({"AWS_DEFAULT_REGION": target.region} if target.region else {}),
    }
    argv = [
        *runas,
        engine._python(),
        "-c",
        _FETCHER,
        target.archive_url,
        target.server_name,
        target.endpoint_url or "",
        str(spool),
        first_segment,
        str(AHEAD),
        str(JOBS),
    ]
    # its messages go to a file: a pipe nobody reads would fill up and stall the fetcher
    fetcher_log = root / "wal-fetcher.log"
    with open(fetcher_log, "wb") as err:
        fetcher = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=env
        )
    # a fetcher that dies (killed, out of memory) cannot mark the spool done itself: without the
    # mark the restore_command would wait WAIT_STEPS for every segment it had not brought yet
    watcher = threading.Thread(target=_mark_done_on_exit, args=(fetcher, spool), daemon=True)
    watcher.start()
    try:
        _wait_for_plan(spool, fetcher, fetcher_log)
        yield f"sh {shlex.quote(str(script))} %f %p"
    finally:
        with contextlib.suppress(OSError):
            fetcher.stdin.close()  # the fetcher exits on EOF
        try:
            fetcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            fetcher.kill()
            fetcher.wait()
        watcher.join()
        for path in spool.iterdir():
            path.unlink(missing_ok=True)
        spool.rmdir()


def _mark_done_on_exit(fetcher: subprocess.Popen, spool: Path) -> None:
    fetcher.wait()
    tmp = spool / f".{DONE}.watcher"
    with contextlib.suppress(OSError):  # the fetcher's own mark, or the spool gone: nothing to do
        tmp.touch()
        tmp.replace(spool / DONE)


def _wait_for_plan(spool: Path, fetcher: subprocess.Popen, fetcher_log: Path, timeout: float = 120) -> None:
    """The server starts once the fetcher knows what it will fetch (or has given up: then every
    segment comes from the fallback command, as without a spool)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (spool / PLAN).exists():
            return
        if fetcher.poll() is not None or (spool / DONE).exists():
            err = fetcher_log.read_text(errors="replace").strip().splitlines()[-1:]
            log.warning("WAL prefetch did not start (%s): fetching segment by segment", err or "no plan")
            return
        time.sleep(0.05)
    log.warning("WAL prefetch did not list the archive in %.0f s: fetching segment by segment", timeout)


def planned_segments(root: Path) -> list[str] | None:
    """The archive's segments the fetcher listed (the base backup's timeline, from its first
    segment on), or None where no fetcher listed them."""
    try:
        return (root / SPOOL / PLAN).read_text().split()
    except FileNotFoundError:
        return None


# how the restore_command got each file (its log's first word) -> the report's key
_HOW = {"spool": "from_spool", "fetcher": "from_fetcher", "missing": "not_archived", "fallback": "fallback"}


def restore_report(root: Path) -> dict[str, list[str]]:
    """What the recovering server asked for so far: the files the spool served ahead, those the
    running fetcher answered on request (history files, a segment asked again) or found not to
    be archived (the end of WAL), and those the fallback command was run for."""
    try:
        lines = (root / RESTORE_LOG).read_text().split("\n")
    except FileNotFoundError:
        lines = []
    pairs = [line.split(" ", 1) for line in lines if " " in line]
    return {key: [name for how, name in pairs if how == kind] for kind, key in _HOW.items()}
