"""Which store: a store block given, loaded by name, named by $KLB_STORE, or the embedded local one."""

from __future__ import annotations

import os

from prefect.blocks.core import Block

from blocks.store import LocalStore, S3Store, StoreBlock
from tasks.errors import ConfigurationError
from tasks.named_blocks import load_named


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
    named = (LocalStore, S3Store) if "/" not in ref else (Block,)
    block = next((b for b in (load_named(cls, ref) for cls in named) if b is not None), None)
    if block is None:
        raise ConfigurationError(
            f"no store block named {ref!r}: create one (docs/deployments.md, scripts/create_blocks.py) "
            "or leave it empty for the embedded local store"
        )
    if not isinstance(block, StoreBlock):
        raise ConfigurationError(f"block {ref!r} is a {type(block).__name__}, not a backup store")
    return block
