"""Which store: a store block given, loaded by name, named by $KLB_STORE, or the embedded local one."""

from __future__ import annotations

import os

from prefect.blocks.core import Block

from blocks.store import LocalStore, S3Store, StoreBlock
from tasks.errors import ConfigurationError


def load_store(ref: str | StoreBlock | None = None) -> StoreBlock:
    """A store block: given, loaded by name, named by $KLB_STORE, or the embedded local store."""
    if isinstance(ref, StoreBlock):
        return ref
    if ref is not None and not isinstance(ref, str):  # e.g. a target block passed as the store
        raise ConfigurationError(
            f"store must be a store block (LocalStore or S3Store) or its name, not a {type(ref).__name__}: "
            "pass the store block, or its name (docs/deployments.md)"
        )
    ref = ref or os.environ.get("KLB_STORE")
    if not ref:
        return LocalStore()
    try:
        if "/" in ref:
            block = Block.load(ref)
        else:
            try:
                block = LocalStore.load(ref)
            except ValueError:
                block = S3Store.load(ref)
    except ValueError:
        raise ConfigurationError(
            f"no store block named {ref!r}: create one (docs/deployments.md, scripts/create_blocks.py) "
            "or leave it empty for the embedded local store"
        ) from None
    if not isinstance(block, StoreBlock):
        raise ConfigurationError(f"block {ref!r} is a {type(block).__name__}, not a backup store")
    return block
