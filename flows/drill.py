"""The monthly restore drill (issue #8)."""

from __future__ import annotations

from prefect import flow

from blocks.store import StoreBlock
from tasks.errors import ConfigurationError


@flow(name="restore-drill")
def restore_drill(store: str | StoreBlock | None = None) -> dict:
    """Restore the newest backups into isolation and measure RTO and RPO."""
    raise ConfigurationError("the restore drill is not built in this release yet (issue #8)")
