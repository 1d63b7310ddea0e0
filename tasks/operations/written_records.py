"""Restore records of writes made outside the checklist: restore_component (and pitr_kubernetes
through it), partial_restore, namespace_corruption, data_corruption, the full cluster restore's
steps, rollback_postgres.

A rollback of a checklist restore puts its safety backup back: every write into the same target
since then is undone with it. check_nothing_later (rollback_checks.py) refuses when it finds one,
but it finds only records: a restore that wrote none was undone without a word. So each of these
writes stores a RestoreRecord too (kind 'restore', `via` its flow, no safety backup): 'running'
before the target is touched (a run killed mid-write still counts), then restored / nothing
restored / failed as the checklist path decides it (restores.settle). Such a record is never
rolled back itself: it has no safety backup (check_rollback_allowed says what to do instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect.blocks.core import Block

from blocks.store import StoreBlock
from tasks.ids import new_backup_id
from tasks.models import Manifest
from tasks.operations.restores import (
    RestoreRecord,
    record_key_of,
    settle,
    settle_failure,
    target_digest,
)
from tasks.storage.backends import backend_for
from tasks.storage.records import put_record
from tasks.verbs import restore_options


@dataclass
class Write:
    """What the flow tells the record while it writes: the restore's report, and `changed=True`
    once the flow itself changed the target (deleted a namespace or claims before the restore,
    swapped a database): then the record says changed whatever the restore step reports."""

    record: RestoreRecord
    report: dict[str, Any] | None = None
    changed: bool = False

    @property
    def id(self) -> str:
        return self.record.id


@contextmanager
def recorded_write(
    store: StoreBlock,
    via: str,
    component: str,
    backup_id: str,
    target: Block,
    options: dict[str, Any] | None = None,
    size: int | None = None,
) -> Iterator[Write]:
    """Around one write into `target`, under the component lock the flow already holds (so
    `locked_at` orders it among the checklist's restores: order_of). `options` are the component's
    restore options as given (checked here; None: the defaults)."""
    given = restore_options(component, options).model_dump(mode="json", exclude_unset=True)
    now = datetime.now(UTC)
    record = RestoreRecord(
        id=new_backup_id("restore"),
        component=component,
        backup_id=backup_id,
        size=size,
        status="running",
        started_at=now,
        locked_at=now,
        target=getattr(target, "_block_document_name", None),
        target_digest=target_digest(target),
        options=given,
        via=via,
    )
    key = record_key_of(store, record.id)
    put_record(store, key, record)  # before the target is touched: a killed run leaves 'running'
    write = Write(record)

    def finish(record: RestoreRecord) -> None:
        record.finished_at = datetime.now(UTC)
        record.duration_seconds = (record.finished_at - now).total_seconds()
        put_record(store, key, record)

    try:
        yield write
        record.report = write.report
        if write.changed:
            record.status, record.target_changed = "restored", True
        else:
            settle(record)
    except Exception as exc:
        if getattr(exc, "target_untouched", False) and not write.changed:
            # refused before it changed anything (a step the backup lacks, RBAC that forbids the
            # restore): it blocks no rollback, and bad input changes nothing, its store included
            backend_for(store).delete_keys([key])
            raise
        record.report = write.report
        settle_failure(record, exc)
        if write.changed:  # the flow changed the target before the restore step failed
            record.target_changed = True
        finish(record)
        raise
    finish(record)


def recorded_restore(
    store: StoreBlock, via: str, manifest: Manifest, target: Block, options: dict[str, Any] | None = None
) -> Any:
    """recorded_write of a restore of `manifest`. Not after the checklist's check_restore: that one
    also refuses what a safety backup could not hold (a full-cluster volumes step into a mapped
    namespace its kubernetes step made), and these writes take none."""
    return recorded_write(store, via, manifest.component, manifest.id, target, options, manifest.raw_size)
