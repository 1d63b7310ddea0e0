"""Files we write into the recovered instance's data directory, which its server's OS user owns.

Run as root for a server of another user, a plain open() there follows whatever that user (or
a link in a tampered base backup) put at the name: appending recovery settings would write into
/etc/shadow, a chown would hand it over. Every open here refuses a link at the last component
(O_NOFOLLOW); the instance's own directory stays ours, so no link can stand higher up.
"""

from __future__ import annotations

import errno
import os
import pwd
from pathlib import Path

from tasks.errors import IntegrityError


def _open(path: Path, flags: int, mode: int = 0o600) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntegrityError(
                f"{path} is a symbolic link: a recovered instance's files are written only as "
                "regular files (a link there would have us write wherever it points). The instance "
                "was removed; look at what put the link there, then recover again."
            ) from None
        raise


def read_text(path: Path) -> str:
    with os.fdopen(_open(path, os.O_RDONLY), encoding="utf-8", errors="replace") as fh:
        return fh.read()


def write_text(path: Path, text: str) -> None:
    with os.fdopen(_open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", encoding="utf-8") as fh:
        fh.write(text)


def append_text(path: Path, text: str) -> None:
    with os.fdopen(_open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a", encoding="utf-8") as fh:
        fh.write(text)


def touch(path: Path) -> None:
    os.close(_open(path, os.O_WRONLY | os.O_CREAT))


def give(path: Path, user: str) -> None:
    """Hand `path` to `user`; a link is refused, never followed."""
    fd = _open(path, os.O_RDONLY)
    try:
        os.fchown(fd, pwd.getpwnam(user).pw_uid, -1)
    finally:
        os.close(fd)
