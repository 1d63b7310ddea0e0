"""Point-in-time recovery (issue #4)."""

from __future__ import annotations

from datetime import datetime

from prefect import flow
from prefect.blocks.core import Block

from blocks.store import StoreBlock
from tasks.errors import ConfigurationError


@flow(name="pitr-postgres")
def pitr_postgres(
    target_time: datetime, target: str | Block | None = None, store: str | StoreBlock | None = None
) -> dict:
    """Recover PostgreSQL to `target_time` into a new instance."""
    raise ConfigurationError("PostgreSQL PITR is not built in this release yet (issue #4)")
