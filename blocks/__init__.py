"""Prefect blocks: where things are, with their secrets. Register with `prefect block register -m blocks`."""

from blocks.restore_guard import RestoreGuard
from blocks.store import LocalStore, S3Store, StoreBlock

__all__ = ["LocalStore", "RestoreGuard", "S3Store", "StoreBlock"]
