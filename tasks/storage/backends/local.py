"""A directory as a store: atomic writes (partial file, fsync, rename), fsync'd directories."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from tasks.errors import ConfigurationError, NotFound
from tasks.storage.backends.base import READ_CHUNK, Backend


def _disk_error(exc: OSError, path: Path) -> ConfigurationError:
    if exc.errno == errno.ENOSPC:
        return ConfigurationError(
            f"local store is full ({path}): free space or point KLB_STORE_DIR / the store block "
            "elsewhere; the partial backup was removed"
        )
    return ConfigurationError(f"local store error at {path}: {exc.strerror}")


class _LocalWriter:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.partial = final.with_name(f"{final.name}.partial-{secrets.token_hex(4)}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.partial, "wb")  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            raise _disk_error(exc, final) from None

    def write(self, data: bytes) -> None:
        try:
            self._fh.write(data)
        except OSError as exc:
            raise _disk_error(exc, self.final) from None

    def commit(self) -> None:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self.partial, self.final)
            _fsync_dir(self.final.parent)
        except OSError as exc:
            self.abort()
            raise _disk_error(exc, self.final) from None

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend(Backend):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ConfigurationError(f"key {key!r} escapes the store directory")
        return path

    def preflight(self) -> None:
        pass

    def open_writer(self, key: str, lock_until: datetime | None = None) -> _LocalWriter:
        # a directory cannot lock: object_lock_mode exists only on the S3 store block
        return _LocalWriter(self._path(key))

    def read(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        try:
            fh = open(self._path(key), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFound(f"object {key} is missing from the local store {self.root}") from None
        with fh:
            while chunk := fh.read(READ_CHUNK):
                yield chunk

    def put_bytes(self, key: str, data: bytes, lock_until: datetime | None = None) -> None:
        writer = self.open_writer(key)
        writer.write(data)
        writer.commit()

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if ".partial-" not in name:
                    yield str((Path(dirpath) / name).relative_to(self.root))

    def list_tagged(self, prefix: str) -> dict[str, str]:
        out = {}
        for key in self.list_keys(prefix):
            st = os.stat(self.root / key)
            out[key] = f"{st.st_size}-{st.st_mtime_ns}"
        return out

    def delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):  # prune empty backup/date directories
                path.parent.rmdir()
                path.parent.parent.rmdir()

    def incomplete_writes(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return [str(p.relative_to(self.root)) for p in base.rglob("*.partial-*")]

    def abort_incomplete_writes(self, prefix: str, stale: Callable[[str, datetime], bool]) -> list[str]:
        """Remove partial files a killed process left, those `stale(key, modified)` says are old."""
        removed = []
        for key in self.incomplete_writes(prefix):
            path = self.root / key
            with contextlib.suppress(FileNotFoundError):
                if stale(key, datetime.fromtimestamp(path.stat().st_mtime, UTC)):
                    path.unlink()
                    removed.append(key)
        return removed
