"""Retention plan over 10,000 manifests on moto's S3 server: how long listing + planning take.

Run: PYTHONPATH=. .venv/bin/python -m bench.retention_bench [--count 10000] [--objects 1]
Starts its own moto server on loopback, fills a bucket with synthetic sealed manifests (and
`--objects` small data objects per backup), then times the cold listing (every manifest fetched),
the warm listing (manifest index reused, see tasks/storage/index.py) and the pure planning step.
"""

from __future__ import annotations

import argparse
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from sandbox.s3 import make_bucket, s3_store
from sandbox.services import start_moto
from tasks.ids import new_backup_id
from tasks.models import Compression, Encryption, Manifest, StoredObject
from tasks.storage.backends import backend_for
from tasks.storage.catalog import list_backups
from tasks.storage.index import list_component
from tasks.storage.layout import StoreLayout, layout
from tasks.storage.retention import plan_retention
from tasks.storage.retention_types import RetentionPolicy

COMPONENT = "etcd"


def synthetic(now: datetime, i: int, n_objects: int) -> tuple[Manifest, dict[str, bytes]]:
    started = now - timedelta(hours=i)
    backup_id = new_backup_id(COMPONENT, started)
    keys = StoreLayout("backups")  # the default store prefix
    objects, data = [], {}
    for j in range(n_objects):
        body = secrets.token_bytes(64)
        key = keys.object_key(backup_id, f"obj{j}")
        data[key] = body
        objects.append(
            StoredObject(
                name=f"obj{j}",
                key=key,
                size=len(body),
                sha256="0" * 64,
                raw_size=len(body),
                raw_sha256="0" * 64,
                compression=Compression.none,
                encryption=Encryption.none,
            )
        )
    manifest = Manifest(
        id=backup_id,
        component=COMPONENT,
        source_time=started,
        started_at=started,
        finished_at=started + timedelta(seconds=30),
        objects=objects,
        verified_at=started + timedelta(seconds=31) if i % 7 else None,
    ).sealed()
    data[keys.manifest_key(backup_id)] = manifest.model_dump_json(indent=2).encode()
    return manifest, data


def _fmt(timings: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--objects", type=int, default=1)
    args = parser.parse_args()
    moto = start_moto()
    try:
        who = {"key_id": "bench", "secret": "bench", "region": "us-east-1"}  # moto
        make_bucket(moto.url, "klb-bench", **who)
        store = s3_store(moto.url, "klb-bench", **who)
        backend = backend_for(store)
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        items = [synthetic(now, i, args.objects) for i in range(args.count)]

        def put(item):
            for key, body in item[1].items():
                backend.client.put_object(Bucket="klb-bench", Key=key, Body=body)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, items))
        fill = time.perf_counter() - t0

        t0 = time.perf_counter()
        baseline = list_backups(store, COMPONENT)
        t_list_backups = time.perf_counter() - t0

        t0 = time.perf_counter()
        cold = list_component(store, COMPONENT)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = list_component(store, COMPONENT)
        t_warm = time.perf_counter() - t0
        assert len(baseline) == len(cold.manifests) == len(warm.manifests) == args.count

        t0 = time.perf_counter()
        plan = plan_retention(
            warm.manifests,
            RetentionPolicy.from_table(COMPONENT),
            now,
            keys=warm.keys,
            prefix=layout(store).component_dir(COMPONENT),
        )
        t_plan = time.perf_counter() - t0
        c = plan.counts()
        print(f"manifests: {args.count} ({args.objects} data object(s) each); fill {fill:.1f}s")
        print(f"catalog.list_backups (every manifest fetched, 16 threads): {t_list_backups:.2f}s")
        print(f"list_component cold (fetch all, write index):           {t_cold:.2f}s")
        print(f"list_component warm (listing + index, ETag-checked):    {t_warm:.2f}s")
        print(f"  phases cold: {_fmt(cold.timings)}  (fetched {cold.fetched})")
        print(f"  phases warm: {_fmt(warm.timings)}  (fetched {warm.fetched})")
        print(f"plan_retention:                                          {t_plan:.2f}s")
        print(f"plan: keep {c['keep']}, delete {c['delete']}")
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
