"""Processes this test process started, at any depth. Tests that check nothing was left running
look only at their own descendants: other test runs (and xdist workers) share the machine."""

from __future__ import annotations

import os
from pathlib import Path


def descendants(root: int | None = None) -> dict[int, list[bytes]]:
    """pid -> argv of every live process below `root` (default: this process)."""
    root = root or os.getpid()
    parent, argvs = {}, {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argvs[int(proc.name)] = (proc / "cmdline").read_bytes().split(b"\0")
            parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended

    def below(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == root:
                return True
        return False

    return {pid: argv for pid, argv in argvs.items() if below(pid)}
