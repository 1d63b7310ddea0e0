"""Small JSON records kept in the store beside the backups: recovery points, drills, restores,
full-cluster-restore steps. Each lives in its own key space under the store's prefix, so none
of them can be mistaken for a backup (a backup is a folder with a manifest.json). Their keys come
from tasks/storage/layout.py (StoreLayout.recovery_point_key, drill_key, restore_record_key, ...).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from blocks.store import StoreBlock
from tasks.errors import IntegrityError, NotFound
from tasks.storage.backends import backend_for
from tasks.storage.layout import layout

log = logging.getLogger(__name__)


def put_record(store: StoreBlock, key: str, record: BaseModel | dict[str, Any]) -> str:
    """Write one JSON record whole (local: atomic rename; S3: a single PUT)."""
    if isinstance(record, BaseModel):
        body = record.model_dump_json(indent=2).encode()
    else:
        body = json.dumps(record, indent=2, default=str, sort_keys=True).encode()
    backend_for(store).put_bytes(key, body)
    return key


def get_record(store: StoreBlock, key: str) -> dict[str, Any]:
    try:
        data = backend_for(store).get_bytes(key)
    except NotFound:
        raise NotFound(f"no record {key} in {store.location}") from None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"record {key} is unreadable: {exc}") from None


def iter_records(
    store: StoreBlock, space: str, suffix: str = ".json"
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, record) for every record under <prefix>/<space>/ (a layout record space such as
    layout.DRILLS) ending in `suffix`; an unreadable
    record is logged and skipped so one bad file cannot hide the rest."""
    backend = backend_for(store)
    for key in sorted(backend.list_keys(layout(store).records_dir(space))):
        if not key.endswith(suffix):
            continue
        try:
            yield key, get_record(store, key)
        except (IntegrityError, NotFound) as exc:
            log.error("skipping record: %s", exc)
