"""Fast catalog listing for sweeps over thousands of backups: one listing, a manifest cache.

The manifests stay the truth. The index (`<prefix>/_index/<component>.json`) is only a cache of
manifest bodies keyed by the ETag the listing reports for each manifest key: a tag that changes
with the content. Local stores have no such tag (size and mtime survive bit rot), so there every
manifest is read each time (a local read costs what hashing it would). A listing is always made;
a manifest whose tag differs from the cached one, or that is not cached, is fetched again; a
cached body is used only when it is the stored manifest byte for byte (its MD5 is the listed ETag:
whoever can write the bucket can write the index too), and is re-checked against its own checksum,
against the key it was listed under and, on a store with keys, against its signature (signing.py:
the index was written under other settings, maybe trusting unsigned manifests). A lost,
stale or damaged index costs time, never correctness. Nothing on the write path changes, so
concurrent backups cannot race on it. On a store whose bucket locks, every manifest is read as
first written (as the catalog reads it), and the cache is not used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from blocks.store import StoreBlock
from tasks.errors import IntegrityError, NotFound
from tasks.ids import check_component_name
from tasks.models import Manifest
from tasks.storage import object_lock
from tasks.storage.backends import Backend, S3Backend, backend_for
from tasks.storage.catalog import _backup_id_at, parse_manifest
from tasks.storage.health import mark_damaged
from tasks.storage.layout import is_manifest_key, layout

log = logging.getLogger(__name__)
INDEX_VERSION = 2  # 2: entries hold the stored body, checked against the ETag


@dataclass
class ComponentListing:
    manifests: list[Manifest]  # oldest first
    keys: list[str]  # every key under the component's folder (pinned versions: pinned_presence)
    unreadable: dict[str, str] = field(default_factory=dict)  # manifest key -> why
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (bench/)
    fetched: int = 0  # manifests read from the store (the rest came from the index)


def _read_index(backend: Backend, key: str) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(backend.get_bytes(key))
        if data.get("version") == INDEX_VERSION:
            return data["entries"]
    except NotFound:
        pass
    except Exception as exc:  # a damaged cache is rebuilt, never trusted
        log.warning("manifest index %s unreadable, rebuilding: %s", key, str(exc)[:200])
    return {}


def _from_cache(entry: dict[str, str], tag: str, key: str, store: StoreBlock) -> Manifest | None:
    """The cached body, only if it is the stored manifest byte for byte: its MD5 is the ETag the
    listing gives for that key. The index is written by whoever can write the bucket: an entry
    matching only the tag (a forged body under the real ETag) once made retention act on a
    manifest the store does not hold. Tags that are not an MD5 (multipart, SSE-KMS): not used."""
    body = entry.get("body")
    digest = tag.strip('"')
    if not isinstance(body, str) or len(digest) != 32:
        return None
    if hashlib.md5(body.encode()).hexdigest() != digest:  # noqa: S324 - S3's ETag is an MD5
        return None
    try:
        return parse_manifest(body.encode(), key, store)  # its signature too: as read from the store
    except (ValidationError, IntegrityError):
        return None


def pinned_presence(
    backend: Backend, folder: str, manifests: list[Manifest], current: dict[str, str] | set[str]
) -> tuple[set[str], set[str]]:
    """On a versioned bucket, where a manifest pins each object's version, whether an object is
    there is whether THAT version is, not whether the key lists: (keys a delete marker hides
    while the pinned version is stored: the backup's, not gone; keys listed whose pinned version
    is gone: overwritten, then the pinned version purged, so a restore of it fails). One version
    listing, only on a versioned bucket."""
    pinned = [o for m in manifests for o in m.objects if o.version_id]
    if not pinned or not isinstance(backend, S3Backend):
        return set(), set()
    versions = backend.key_versions(folder)
    stored = {o.key for o in pinned if o.version_id in versions.get(o.key, [])}
    return {o.key for o in pinned if o.key not in current and o.key in stored}, {
        o.key for o in pinned if o.key in current and o.key not in stored
    }


def list_component(store: StoreBlock, component: str, use_index: bool = True) -> ComponentListing:
    """All manifests of `component` (oldest first) and every key under its folder."""
    check_component_name(component)
    backend = backend_for(store)
    t0 = time.perf_counter()
    keys = layout(store)
    # one paginated listing: listing the date folders in parallel was tried and was no faster on
    # moto (its cost is per key, not per page) and costs one LIST request per day, not per 1,000 keys
    tagged = backend.list_tagged(keys.component_dir(component))
    # a locked store: each manifest as first written (catalog.list_backups reads the same); the
    # cache, keyed on current versions, could hand on a forged later version: not used there
    written = object_lock.written_manifests(store, backend, keys.component_dir(component), datetime.now(UTC))
    use_index = use_index and written is None
    named = sorted(written if written is not None else (k for k in tagged if is_manifest_key(k)))
    manifest_keys = [k for k in named if keys.is_manifest_of(k, component)]
    # a manifest.json anywhere else (a sync tool's leftover, a copy made by hand) is no backup:
    # reported to the sweep as found, never read as one, never a reason to touch backups near it
    strays = {
        k: "not where a backup of this component keeps its manifest" for k in named if k not in manifest_keys
    }
    ikey = keys.index_key(component)
    t1 = time.perf_counter()
    cache = _read_index(backend, ikey) if use_index else {}

    if not backend.content_tags:  # a tag that is not the content's proves nothing: read them all
        tagged = {k: "" for k in tagged}
    found: dict[str, Manifest] = {}
    bodies: dict[str, str] = {}  # as stored, for the index
    missing: list[str] = []
    for key in manifest_keys:
        cached = _from_cache(cache.get(key, {}), tagged.get(key, ""), key, store)
        if cached is not None:
            found[key], bodies[key] = cached, cache[key]["body"]
        else:
            missing.append(key)

    t2 = time.perf_counter()
    unreadable: dict[str, str] = dict(strays)

    def fetch(key: str) -> tuple[str, Manifest | None]:
        try:
            data = b"".join(backend.read(key, (written or {}).get(key)))
            manifest = parse_manifest(data, key, store)
            bodies[key] = data.decode()
            return key, manifest
        except IntegrityError as exc:
            unreadable[key] = str(exc)
            if exc.proves_damage and (backup_id := _backup_id_at(key, keys)):
                mark_damaged(store, backup_id, str(exc))
            return key, None
        except NotFound as exc:
            unreadable[key] = str(exc)
            return key, None

    # as many threads as the S3 client keeps connections (S3Backend: at least 10)
    with ThreadPoolExecutor(max_workers=10) as pool:
        for key, manifest in pool.map(fetch, missing):
            if manifest is not None:
                found[key] = manifest

    t3 = time.perf_counter()
    if use_index and backend.content_tags and (missing or set(cache) - set(found)):
        entries = {k: {"etag": tagged[k], "body": bodies[k]} for k in found if tagged[k]}
        try:
            backend.put_bytes(ikey, json.dumps({"version": INDEX_VERSION, "entries": entries}).encode())
        except Exception as exc:  # the cache is an optimisation: never fail a sweep over it
            log.warning("could not write manifest index %s: %s", ikey, exc)
    manifests = sorted(found.values(), key=lambda m: (m.source_time, m.id))
    # as the backups' objects are: a pinned version hidden is there, one purged is not
    hidden, purged = pinned_presence(backend, keys.component_dir(component), manifests, tagged)
    listed = sorted((set(tagged) - purged) | hidden)
    timings = {"list": t1 - t0, "index": t2 - t1, "fetch": t3 - t2, "write_index": time.perf_counter() - t3}
    return ComponentListing(
        manifests=manifests, keys=listed, unreadable=unreadable, timings=timings, fetched=len(missing)
    )
