"""Restore flows: verify the backup whole first, then the component's aside/verify/cut-over. The
write leaves a restore record (via restore-component; tasks/operations/written_records.py), so a
rollback of an earlier checklist restore into the same target does not silently undo it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import StoreRef, TargetRef, load_store
from flows.locks import component_lock
from tasks.components.registry import ComponentName
from tasks.metrics import tracked
from tasks.operations.scope import backup_and_target
from tasks.operations.written_records import recorded_restore
from tasks.verbs import restore_options, restore_task, target_changed, verify_task, writes_target


@flow(name="restore-component")
def restore_component(
    component: ComponentName,
    backup_id: str = "latest",
    target: TargetRef = None,
    store: StoreRef = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore one component from a backup id (or 'latest'). Refuses a corrupted backup before
    the target is touched.

    Args:
        component: Which component: kubernetes, volumes, postgres, postgres-pitr, etcd, rabbitmq or
            app-state (backup-table.yaml lists them).
        backup_id: Which backup: 'latest' (the newest verified backup of the component) or an id as
            listed by `python -m flows.catalog list`, `<component>-<YYYYMMDDTHHMMSSZ>-<6 hex>`, e.g.
            kubernetes-20260101T020000Z-a1b2c3.
        target: Name of the component's target block (e.g. 'production'); empty: the default from
            the KLB_*_TARGET setting. From Python, a block object.
        store: Name of the store block holding the backups ('klb-s3-store/production' or
            'production'); empty: $KLB_STORE.
        options: Restore options of the component (its RestoreOptions fields, docs/components.md),
            e.g. {"namespaces": ["lambda"], "existing_resource_policy": "update"} for kubernetes.

    Returns the component's report with `backup_id` and `restore_id` (its restore record: no
    safety backup, so not rolled back with rollback_restore; restore an older backup instead).
    """
    component = ComponentName(component).value
    restore_options(component, options)  # a typo or an empty selection fails before anything
    with tracked("restore", component) as run:  # metrics: failures are pushed too (try/finally)
        store_block = load_store(store)
        # 'latest' is the newest backup covering what is asked for, never a narrower one
        manifest, target_block = backup_and_target(store_block, backup_id, component, target, options)
        # never while a backup of this component runs (nor of kubernetes, when it scales apps)
        with component_lock(component, options=options):
            verify_task(manifest, store_block, target_block)
            with recorded_restore(store_block, "restore-component", manifest, target_block, options) as write:
                report = write.report = restore_task(manifest, target_block, store_block, options)
        run.gauges["restore_rpo_seconds"] = datetime.now(UTC).timestamp() - manifest.source_time.timestamp()
    title = f"Restore of {component} from {manifest.id}"
    if writes_target(component, options) and not target_changed(component, options, report):
        # it ran to its end and wrote nothing (every object there already): never "restored"
        title += ": nothing written"
        get_run_logger().warning("%s: %s", title, report.get("note", "the target is as it was"))
    else:
        get_run_logger().info("restored %s from %s", component, manifest.id)
    create_markdown_artifact(key=f"restore-{component}", markdown=f"# {title}\n\n```json\n{report}\n```\n")
    return {"backup_id": manifest.id, "restore_id": write.id, **report}
