"""What every flow needs: the store and targets from block names, results kept in the store."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from prefect.filesystems import LocalFileSystem

from blocks.app_state import AppStateTarget
from blocks.etcd import EtcdTarget
from blocks.kubernetes import VeleroTarget
from blocks.pitr import PitrTarget
from blocks.postgres import PostgresTarget
from blocks.rabbitmq import RabbitMQTarget
from blocks.store import LocalStore, S3Store, StoreBlock
from tasks.errors import BackupError
from tasks.storage.layout import layout
from tasks.storage.stores import load_store  # noqa: F401 - flows import it from here


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


def result_storage(store: StoreBlock) -> str:
    """Task results persist beside the backups they describe (manifests hold no secrets).

    Prefect wants result storage saved server-side: save it under a name derived from the
    store's location (idempotent) and hand Prefect the reference.
    """
    name = "klb-results-" + hashlib.sha256(store.location.encode()).hexdigest()[:12]
    if isinstance(store, LocalStore):
        block = LocalFileSystem(basepath=str(Path(store.path) / layout(store).results_dir()))
        slug = "local-file-system"
    else:
        from prefect_aws import S3Bucket

        block = S3Bucket(
            bucket_name=store.bucket,
            credentials=store.credentials,
            bucket_folder=layout(store).results_dir(),
        )
        slug = "s3-bucket"
    block.save(name, overwrite=True)
    return f"{slug}/{name}"
