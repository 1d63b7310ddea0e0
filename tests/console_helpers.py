"""App-state samples for the console, progress and rotation tests: a directory tarred by a real
`tar`, restored into another directory, with a drill step."""

from __future__ import annotations

import os
from pathlib import Path

from blocks.app_state import AppStateStep, AppStateTarget


def sample_dir(root: Path, size: int = 3 * 1024 * 1024 + 17) -> Path:
    src = root / "app"
    (src / "sessions").mkdir(parents=True, exist_ok=True)
    (src / "sessions" / "active.json").write_text('{"active": 1284}\n')
    (src / "blob.bin").write_bytes(os.urandom(size))
    return src


def app_target(src: Path, dest: Path) -> AppStateTarget:
    dest.mkdir(parents=True, exist_ok=True)
    return AppStateTarget(
        steps=[
            AppStateStep(
                name="files",
                backup_command=["tar", "-C", str(src), "-cf", "-", "."],
                restore_command=["tar", "-C", str(dest), "-xf", "-"],
                drill_restore_command=["tar", "-xf", "-"],
                verify_command=["test", "-s", "sessions/active.json"],
            )
        ]
    )


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
