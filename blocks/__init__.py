"""Prefect blocks: where things are, with their secrets. Register with `prefect block register -m blocks`."""

from blocks.postgres import PostgresTarget
from blocks.store import LocalStore, S3Store, StoreBlock

__all__ = ["LocalStore", "PostgresTarget", "S3Store", "StoreBlock"]
