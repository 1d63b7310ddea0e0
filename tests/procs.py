"""Processes this test process started, at any depth. Tests that check nothing was left running
look only at their own descendants: other test runs (and xdist workers) share the machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def stop(proc: subprocess.Popen) -> None:
    """Terminate a process the test started, killed if it has not exited 30 s later."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def descendant_pids(root: int | None = None) -> list[int]:
    """Every live process below `root` (default: this process), from one read of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(path.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended
        children.setdefault(ppid, []).append(int(path.parent.name))
    out, todo = [], [root or os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def descendants(root: int | None = None) -> dict[int, list[bytes]]:
    """pid -> argv of every live process below `root` (default: this process)."""
    out = {}
    for pid in descendant_pids(root):
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # the process ended
    return out


_RECORDER = """#!/bin/sh
# record this command's argv and environment, then run the real one
out={log}/$(basename "$0").$$
printf '%s\\n' "$@" > "$out.argv"
env > "$out.env"
exec {real} "$@"
"""


def recording_wrapper(real: str | Path, wrapper: Path, log: Path) -> Path:
    """A script at `wrapper` that writes each run's argv and environment under `log` (as
    <name>.<pid>.argv/.env) and then execs `real`: what a secret-keeping test reads back."""
    wrapper.write_text(_RECORDER.format(log=log, real=real))
    wrapper.chmod(0o755)
    return wrapper
