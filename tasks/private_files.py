"""Private temporary directories (0700) and files (0600) of this user, removed on exit."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def private_dir() -> Iterator[str]:
    """A fresh directory only this user can enter (0700), removed with its content on exit."""
    folder = tempfile.mkdtemp(prefix="klb-")  # created 0700
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def private_file(name: str, content: str) -> Iterator[str]:
    """A file only this user can read (0600) in a fresh private directory (0700), both removed
    on exit: how an engine gets a credential without it being in its argv or environment
    (an environment is readable in /proc by the same user and inherited by every child)."""
    with private_dir() as folder:
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        yield path
