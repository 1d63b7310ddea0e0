"""etcd: the runbook's `etcdctl snapshot save` + upload against the component's backup, and the
restore check (restore into a new data dir + throwaway member), on a throwaway etcd.

    PYTHONPATH=. .venv/bin/python -m bench.etcd_bench [--keys 100000] [--value-bytes 1024] [--repeat 3]

Values are random (incompressible, like Secrets' ciphertext-ish payloads); the store encrypts.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from pydantic import SecretStr

from blocks.etcd import EtcdTarget
from blocks.store import LocalStore
from sandbox.services import start_etcd
from tasks.components import etcd as component
from tasks.storage.session import backup_session


def load(url: str, keys: int, value_bytes: int) -> None:
    b64 = base64.b64encode
    with httpx.Client(base_url=url, timeout=60) as http:
        for start in range(0, keys, 128):  # etcd's default --max-txn-ops is 128
            ops = [
                {
                    "request_put": {
                        "key": b64(f"/registry/secrets/ns/s{i:07d}".encode()).decode(),
                        "value": b64(os.urandom(value_bytes)).decode(),
                    }
                }
                for i in range(start, min(start + 128, keys))
            ]
            http.post("/v3/kv/txn", json={"success": ops}).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (median shown, interleaved)")
    args = parser.parse_args()
    etcd = start_etcd()
    work = Path(tempfile.mkdtemp(prefix="klb-etcd-bench-"))
    try:
        t = time.monotonic()
        load(etcd.url, args.keys, args.value_bytes)
        loaded = time.monotonic() - t
        env = {**os.environ, "ETCDCTL_API": "3"}
        target = EtcdTarget(endpoints=[etcd.url])
        runs: dict[str, list[float]] = {"save": [], "backup": [], "drill": []}
        for i in range(args.repeat):  # interleaved, so drifting load hits each alike
            t = time.monotonic()
            subprocess.run(["etcdctl", "--endpoints", etcd.url, "snapshot", "save", str(work / "s.db")],
                           env=env, check=True, capture_output=True)  # fmt: skip
            runs["save"].append(time.monotonic() - t)
            size = (work / "s.db").stat().st_size
            (work / "s.db").unlink()

            store = LocalStore(path=str(work / f"store{i}"), encryption_key=SecretStr("bench"))
            t = time.monotonic()
            with backup_session(store, "etcd") as session:
                component.backup(target, session)
                manifest = session.commit()
            runs["backup"].append(time.monotonic() - t)

            t = time.monotonic()
            component.drill(target, manifest, store, "bench")
            runs["drill"].append(time.monotonic() - t)

        def median(name: str) -> str:
            spread = ", ".join(f"{x:.2f}" for x in runs[name])
            return f"{statistics.median(runs[name]):.2f} ({spread})"

        print(
            json.dumps(
                {
                    "keys": args.keys,
                    "value_bytes": args.value_bytes,
                    "load_s": round(loaded, 1),
                    "snapshot_bytes": size,
                    "etcdctl_snapshot_save_s": median("save"),
                    "component_backup_s (save+status+count+zstd+aes+sha256+read-back)": median("backup"),
                    "stored_bytes": manifest.size,
                    "drill_s (download+status+restore+start+count)": median("drill"),
                    "backup / save (medians)": round(
                        statistics.median(runs["backup"]) / statistics.median(runs["save"]), 2
                    ),
                },
                indent=2,
            )
        )
    finally:
        etcd.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(etcd.workdir.parent, ignore_errors=True)  # .run/test-<pid>/


if __name__ == "__main__":
    main()
