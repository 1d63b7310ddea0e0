"""Fast catalog listing for sweeps over thousands of backups: one listing, a manifest cache.

The manifests stay the truth. The index (`<prefix>/_index/<component>.json`) is only a cache of
manifest bodies keyed by the ETag the listing reports for each manifest key (local stores: size
and mtime). A listing is always made; a manifest whose tag differs from the cached one, or that
is not cached, is fetched again; a cached body is re-checked against its own checksum. A lost,
stale or damaged index costs time, never correctness. Nothing on the write path changes, so
concurrent backups cannot race on it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from blocks.store import StoreBlock
from tasks.errors import IntegrityError, NotFound
from tasks.ids import check_component_name
from tasks.models import MANIFEST_NAME, Manifest
from tasks.storage.backends import Backend, LocalBackend, S3Backend, backend_for, s3_error
from tasks.storage.catalog import _load
from tasks.storage.session import component_prefix

log = logging.getLogger(__name__)
INDEX_VERSION = 1


def index_key(store: StoreBlock, component: str) -> str:
    # "_index" can never be a component folder: component names start with a letter.
    return f"{store.prefix}/_index/{component}.json"


@dataclass
class ComponentListing:
    manifests: list[Manifest]  # oldest first
    keys: list[str]  # every key under the component's folder
    unreadable: dict[str, str] = field(default_factory=dict)  # manifest key -> why
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (bench/)
    fetched: int = 0  # manifests read from the store (the rest came from the index)


def list_tagged(backend: Backend, prefix: str) -> dict[str, str]:
    """Every key under `prefix` with a change tag (S3 ETag; local size+mtime). One paginated
    listing: listing the date folders in parallel was tried and was no faster on moto (its cost
    is per key, not per page) and costs one LIST request per day instead of one per 1,000 keys."""
    if isinstance(backend, S3Backend):
        out: dict[str, str] = {}
        try:
            pages = backend.client.get_paginator("list_objects_v2").paginate(
                Bucket=backend.bucket, Prefix=prefix.rstrip("/") + "/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    out[item["Key"]] = item["ETag"]
        except Exception as exc:
            raise s3_error(exc, backend.bucket, prefix) from None
        return out
    if isinstance(backend, LocalBackend):
        out = {}
        for key in backend.list_keys(prefix):
            st = os.stat(Path(backend.root) / key)
            out[key] = f"{st.st_size}-{st.st_mtime_ns}"
        return out
    return {key: "" for key in backend.list_keys(prefix)}


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


def _from_cache(entry: dict[str, str], tag: str) -> Manifest | None:
    if not tag or entry.get("etag") != tag:
        return None
    try:
        manifest = Manifest.model_validate_json(entry["manifest"])
    except (ValidationError, KeyError):
        return None
    return manifest if manifest.checksum == manifest.computed_checksum() else None


def list_component(store: StoreBlock, component: str, use_index: bool = True) -> ComponentListing:
    """All manifests of `component` (oldest first) and every key under its folder."""
    check_component_name(component)
    backend = backend_for(store)
    t0 = time.perf_counter()
    tagged = list_tagged(backend, component_prefix(store, component))
    manifest_keys = sorted(k for k in tagged if k.endswith("/" + MANIFEST_NAME))
    ikey = index_key(store, component)
    t1 = time.perf_counter()
    cache = _read_index(backend, ikey) if use_index else {}

    found: dict[str, Manifest] = {}
    missing: list[str] = []
    for key in manifest_keys:
        cached = _from_cache(cache.get(key, {}), tagged[key])
        if cached is not None:
            found[key] = cached
        else:
            missing.append(key)

    t2 = time.perf_counter()
    unreadable: dict[str, str] = {}

    def fetch(key: str) -> tuple[str, Manifest | None]:
        try:
            return key, _load(backend, key)
        except (IntegrityError, NotFound) as exc:
            unreadable[key] = str(exc)
            return key, None

    # as many threads as the S3 client keeps connections (S3Backend: at least 10)
    with ThreadPoolExecutor(max_workers=10) as pool:
        for key, manifest in pool.map(fetch, missing):
            if manifest is not None:
                found[key] = manifest

    t3 = time.perf_counter()
    if use_index and (missing or set(cache) - set(found)):
        entries = {
            k: {"etag": tagged[k], "manifest": m.model_dump_json()} for k, m in found.items() if tagged[k]
        }
        try:
            backend.put_bytes(ikey, json.dumps({"version": INDEX_VERSION, "entries": entries}).encode())
        except Exception as exc:  # the cache is an optimisation: never fail a sweep over it
            log.warning("could not write manifest index %s: %s", ikey, exc)
    manifests = sorted(found.values(), key=lambda m: (m.source_time, m.id))
    timings = {"list": t1 - t0, "index": t2 - t1, "fetch": t3 - t2, "write_index": time.perf_counter() - t3}
    return ComponentListing(
        manifests=manifests, keys=sorted(tagged), unreadable=unreadable, timings=timings, fetched=len(missing)
    )
