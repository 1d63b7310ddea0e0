"""Prefect blocks: where things are, with their secrets. Register with `prefect block register -m blocks`."""

from blocks.store import LocalStore, S3Store, StoreBlock

__all__ = ["LocalStore", "S3Store", "StoreBlock"]
