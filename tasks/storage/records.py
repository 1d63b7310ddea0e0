"""Small JSON records kept in the store beside the backups: recovery points, drills, restores,
full-cluster-restore steps. Each lives in its own key space under the store's prefix, so none
of them can be mistaken for a backup (a backup is a folder with a manifest.json). Their keys come
from tasks/storage/layout.py (StoreLayout.recovery_point_key, drill_key, restore_record_key, ...).

On a store with an encryption key every record is signed, here and only here (put_record), and
every read checks it (get_record, iter_records): tasks/storage/signing.py. A writer of the bucket
without the key cannot make the drill history say a drill passed, or a rollback put back another
backup. The field `signature` is therefore reserved: no record may have one of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel

from blocks.store import StoreBlock
from tasks.errors import IntegrityError, NotFound
from tasks.storage.backends import backend_for
from tasks.storage.layout import DR_RUNS, DRILLS, RESTORES, layout
from tasks.storage.signing import check_record, sign_record

log = logging.getLogger(__name__)


def put_record(store: StoreBlock, key: str, record: BaseModel | dict[str, Any]) -> str:
    """Write one JSON record whole (local: atomic rename; S3: a single PUT); signed on a store
    with keys, byte for byte the JSON below on one without."""
    if isinstance(record, BaseModel):
        body = record.model_dump_json(indent=2).encode()
    else:
        body = json.dumps(record, indent=2, default=str, sort_keys=True).encode()
    backend_for(store).put_bytes(key, sign_record(store, key, body))
    return key


def get_record(store: StoreBlock, key: str) -> dict[str, Any]:
    """The record at `key` (without its signature). IntegrityError if it is unreadable or, on a
    store with keys, not signed there by a key of the store (KeyNotHeld: by a key it lacks)."""
    try:
        data = backend_for(store).get_bytes(key)
    except NotFound:
        raise NotFound(f"no record {key} in {store.location}") from None
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"record {key} is unreadable: {exc}") from None
    return check_record(store, key, record)


def iter_records(
    store: StoreBlock, space: str, suffix: str = ".json"
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, record) for every record under <prefix>/<space>/ (a layout record space such as
    layout.DRILLS) ending in `suffix`. A record that is unreadable or refused (not signed by a
    key of the store) is logged as an error and left out: it never counts (a forged passing
    drill is not in the drill history), and one bad file cannot hide the rest."""
    backend = backend_for(store)
    for key in sorted(backend.list_keys(layout(store).records_dir(space))):
        if not key.endswith(suffix):
            continue
        try:
            yield key, get_record(store, key)
        except (IntegrityError, NotFound) as exc:
            log.error("left out of the %s listed: %s", space, exc)


def refused_records(store: StoreBlock, spaces: Iterable[str] = (DRILLS, RESTORES, DR_RUNS)) -> dict[str, str]:
    """key -> why, for every record of `spaces` that get_record refuses (unreadable, or not
    signed by a key of the store): what the integrity sweep reports. Recovery points are
    checked by the sweep on their own (operations/recovery.py scan_recovery_points)."""
    backend, where = backend_for(store), layout(store)
    refused: dict[str, str] = {}
    for space in spaces:
        for key in sorted(backend.list_keys(where.records_dir(space))):
            if not key.endswith(".json"):
                continue
            try:
                get_record(store, key)
            except IntegrityError as exc:
                refused[key] = str(exc)
            except NotFound:
                continue  # deleted while we listed
    return refused
