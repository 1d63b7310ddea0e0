"""What every flow needs: the store and targets from block names, results kept in the store."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from prefect.blocks.core import Block
from prefect.filesystems import LocalFileSystem

from blocks.app_state import AppStateTarget
from blocks.etcd import EtcdTarget
from blocks.kubernetes import VeleroTarget
from blocks.pitr import PitrTarget
from blocks.postgres import PostgresTarget
from blocks.rabbitmq import RabbitMQTarget
from blocks.store import LocalStore, S3Store, StoreBlock
from tasks.errors import BackupError, ConfigurationError


class _UserErrorsWithoutTraceback(logging.Filter):
    """A BackupError already says what went wrong and what to do: Prefect logs it as one line,
    not with a traceback dump. Any other exception (a bug) keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], BackupError):
            record.exc_info, record.exc_text = None, None
        return True


# Parameter types of the run forms: a block name ("klb-s3-store/production", or just "production"),
# or from Python a block object. Concrete block classes, never Prefect's Block base class, so the
# form shows the project's blocks (and Python callers may still pass any of them).
TargetBlock = AppStateTarget | PostgresTarget | PitrTarget | EtcdTarget | RabbitMQTarget | VeleroTarget
TargetRef = str | TargetBlock | None
VeleroRef = str | VeleroTarget | None  # flows that only work on Kubernetes (Velero)
PostgresRef = str | PostgresTarget | None
PitrRef = str | PitrTarget | None
StoreRef = str | LocalStore | S3Store | None


for _logger in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_logger).addFilter(_UserErrorsWithoutTraceback())


def load_store(ref: str | StoreBlock | None = None) -> StoreBlock:
    """A store block: given, loaded by name, named by $KLB_STORE, or the embedded local store."""
    if isinstance(ref, StoreBlock):
        return ref
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
            f"no store block named {ref!r}: create one (docs/blocks.md) or leave it empty for the "
            "embedded local store"
        ) from None
    if not isinstance(block, StoreBlock):
        raise ConfigurationError(f"block {ref!r} is a {type(block).__name__}, not a backup store")
    return block


def result_storage(store: StoreBlock) -> str:
    """Task results persist beside the backups they describe (manifests hold no secrets).

    Prefect wants result storage saved server-side: save it under a name derived from the
    store's location (idempotent) and hand Prefect the reference.
    """
    name = "klb-results-" + hashlib.sha256(store.location.encode()).hexdigest()[:12]
    if isinstance(store, LocalStore):
        block = LocalFileSystem(basepath=str(Path(store.path) / store.prefix / "_prefect-results"))
        slug = "local-file-system"
    else:
        from prefect_aws import S3Bucket

        block = S3Bucket(
            bucket_name=store.bucket,
            credentials=store.credentials,
            bucket_folder=f"{store.prefix}/_prefect-results",
        )
        slug = "s3-bucket"
    block.save(name, overwrite=True)
    return f"{slug}/{name}"
