"""The one interface both stores implement: bytes in and out under a key. No codec, no manifests,
no key layout (tasks/storage/layout.py builds keys; tasks/storage/session.py builds on this)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Protocol

READ_CHUNK = 1024 * 1024


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> str | None: ...
    def abort(self) -> None: ...


class Backend(ABC):
    location: str
    # True when list_tagged's tag changes whenever the content does (S3's ETag is the MD5 of a
    # single PUT). Size + mtime is not such a tag (bit rot, or a rewrite within the same
    # timestamp, keeps both): caches keyed on it would hide a damaged manifest.
    content_tags: bool = False

    @abstractmethod
    def preflight(self) -> None:
        """Cheap checks before any engine starts (the bucket answers to our credentials)."""

    @abstractmethod
    def open_writer(self, key: str, lock_until: datetime | None = None) -> Writer:
        """A streaming writer: nothing is visible under `key` until `commit()`. `lock_until`:
        the retain-until of the version written, on stores that lock (S3 Object Lock)."""

    @abstractmethod
    def read(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        """Stream an object; NotFound when it is missing."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, lock_until: datetime | None = None) -> str | None:
        """Write a small object whole; returns its version id, if the store keeps versions."""

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.read(key))

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every complete object key under the folder `prefix`."""

    @abstractmethod
    def list_tagged(self, prefix: str) -> dict[str, str]:
        """Every key under the folder `prefix` with a change tag (S3: ETag; local: size and
        mtime): a different tag means the object changed; the same tag proves nothing unless
        `content_tags`. One listing."""

    @abstractmethod
    def delete_keys(self, keys: list[str]) -> None: ...

    @abstractmethod
    def incomplete_writes(self, prefix: str) -> list[str]:
        """Keys of writes under `prefix` that were started and never committed nor aborted."""

    @abstractmethod
    def abort_incomplete_writes(self, prefix: str, stale: Callable[[str, datetime], bool]) -> list[str]:
        """Abort those of them `stale(key, started)` says are old; returns their keys."""
