"""Prefect blocks: where things are, with their secrets. Register with `prefect block register -m blocks`."""

from blocks.pitr import PitrTarget
from blocks.store import LocalStore, S3Store, StoreBlock

__all__ = ["LocalStore", "PitrTarget", "S3Store", "StoreBlock"]
