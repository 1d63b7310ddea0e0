"""Prefect blocks: where things are, with their secrets. Register with `prefect block register -m blocks`."""

from blocks.kubernetes import KubernetesTarget, VeleroTarget
from blocks.store import LocalStore, S3Store, StoreBlock

__all__ = ["KubernetesTarget", "LocalStore", "S3Store", "StoreBlock", "VeleroTarget"]
