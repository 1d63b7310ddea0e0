"""Byte-level I/O of the stores behind one interface (base.Backend): a local directory or an S3
bucket. No codec, no manifests, no key layout: tasks/storage/session.py builds on this."""

from __future__ import annotations

from pathlib import Path

from blocks.store import LocalStore, S3Store, StoreBlock
from tasks.errors import ConfigurationError
from tasks.storage.backends.base import READ_CHUNK, Backend, Writer
from tasks.storage.backends.local import LocalBackend
from tasks.storage.backends.s3 import S3Backend
from tasks.storage.backends.s3_errors import s3_error, s3_errors

__all__ = [
    "READ_CHUNK",
    "Backend",
    "LocalBackend",
    "S3Backend",
    "Writer",
    "backend_for",
    "s3_error",
    "s3_errors",
]


def backend_for(store: StoreBlock) -> Backend:
    if isinstance(store, LocalStore):
        return LocalBackend(Path(store.path))
    if isinstance(store, S3Store):
        return S3Backend(store)
    raise ConfigurationError(f"unsupported store block {type(store).__name__}")
