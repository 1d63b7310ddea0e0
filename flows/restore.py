"""Restore flows: verify the backup whole first, then the component's aside/verify/cut-over."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block

from blocks.store import StoreBlock
from flows.common import load_store
from flows.locks import component_lock
from tasks.components.registry import ComponentName, load_target
from tasks.metrics import tracked
from tasks.storage.catalog import get_backup
from tasks.verbs import restore_options, restore_task, verify_task


@flow(name="restore-component")
def restore_component(
    component: ComponentName,
    backup_id: str = "latest",
    target: str | Block | None = None,
    store: str | StoreBlock | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore one component from a backup id (or 'latest'). Refuses a corrupted backup before
    the target is touched."""
    component = ComponentName(component).value
    restore_options(component, options)  # a typo or an empty selection fails before anything
    with tracked("restore", component) as run:  # metrics: failures are pushed too (try/finally)
        store_block = load_store(store)
        manifest = get_backup(store_block, backup_id, component)
        target_block = load_target(component, target)
        with component_lock(component):  # never while a backup of this component runs
            verify_task(manifest, store_block, target_block)
            report = restore_task(manifest, target_block, store_block, options)
        run.gauges["restore_rpo_seconds"] = datetime.now(UTC).timestamp() - manifest.source_time.timestamp()
    get_run_logger().info("restored %s from %s", component, manifest.id)
    create_markdown_artifact(
        key=f"restore-{component}",
        markdown=f"# Restore of {component} from {manifest.id}\n\n```json\n{report}\n```\n",
    )
    return {"backup_id": manifest.id, **report}
