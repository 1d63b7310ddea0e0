"""Fixtures shared by the drill, checklist and recovery tests: a 'production' app-state whose backup is
`cat` of a file and whose restore replaces that file; drills write only under $KLB_DRILL_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blocks.app_state import AppStateStep, AppStateTarget
from tasks.storage.backends import backend_for

SINK = ["sh", "-c", 'cat > "$KLB_DRILL_DIR/state"']
# replaces production atomically, counts restores, and fails while $PROD.fail exists
RESTORE = [
    "sh",
    "-c",
    'test ! -e "$PROD.fail" && cat > "$PROD.new" && mv "$PROD.new" "$PROD" && echo x >> "$PROD.count"',
]


class Prod:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.file = root / "sessions.json"
        self.file.write_bytes(b'{"session": "alpha"}\n' * 200)

    def target(self, drill: bool = True, verify: list[str] | None = None) -> AppStateTarget:
        step = AppStateStep(
            name="sessions",
            backup_command=["cat", str(self.file)],
            restore_command=RESTORE,
            env={"PROD": str(self.file)},
            drill_restore_command=SINK if drill else None,
            verify_command=verify,
        )
        return AppStateTarget(steps=[step])

    @property
    def restores(self) -> int:
        count = Path(f"{self.file}.count")
        return len(count.read_text().splitlines()) if count.exists() else 0


@pytest.fixture
def prod(tmp_path) -> Prod:
    return Prod(tmp_path / "prod")


@pytest.fixture
def drill_tmp(tmp_path, monkeypatch) -> Path:
    """Drill directories go here, so a test can see that none is left behind."""
    path = tmp_path / "drill-tmp"
    path.mkdir()
    monkeypatch.setenv("KLB_DRILL_TMPDIR", str(path))
    return path


def flip_byte(store, key: str) -> None:
    backend = backend_for(store)
    data = bytearray(backend.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    backend.put_bytes(key, bytes(data))


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose environment or command line contains `text`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for part in ("environ", "cmdline"):
            try:
                if text.encode() in Path(f"/proc/{pid}/{part}").read_bytes():
                    found.append(int(pid))
                    break
            except OSError:
                continue
    return found
