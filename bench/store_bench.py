"""Write-path benchmark of the store: MB/s and peak RSS for streams of 0.5 GiB and 2 GiB.

Each case runs in a fresh child process so its peak RSS (ru_maxrss) is its own.
Data: random bytes mixed with compressible text (about 2:1 for zstd), generated on the fly.

    PYTHONPATH=. .venv/bin/python -m bench.store_bench [--sizes 0.5,2] [--backends local,s3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from sandbox.services import start_moto

MIB = 1024 * 1024


def stream(total: int):
    text = (b"lambda-function invocation ok latency_ms=12 status=200 " * 20000)[: 2 * MIB]
    sent = 0
    while sent < total:
        chunk = os.urandom(2 * MIB) + text
        chunk = chunk[: total - sent]
        sent += len(chunk)
        yield chunk


def run_case(backend: str, size: int, moto_url: str | None, compression: str) -> dict:
    from pydantic import SecretStr  # noqa: F401 - imported in the child like real use

    from blocks.store import LocalStore
    from tasks.storage.session import backup_session

    if backend == "local":
        tmp = tempfile.mkdtemp(prefix="klb-bench-")
        store = LocalStore(path=tmp, compression=compression, verify_after_write=False)
    else:
        from sandbox.s3 import make_bucket, s3_store

        bucket, _ = make_bucket(moto_url, f"bench-{os.getpid()}", region="us-east-1")
        store = s3_store(
            moto_url, bucket, region="us-east-1", compression=compression, verify_after_write=False
        )
    start = time.perf_counter()
    with backup_session(store, "app-state") as session:
        obj = session.write("bench", stream(size))
        session.commit()
    wall = time.perf_counter() - start
    return {
        "backend": backend,
        "compression": compression,
        "size_mib": size // MIB,
        "wall_s": round(wall, 2),
        "mb_s": round(size / MIB / wall, 1),
        "stored_mib": round(obj.size / MIB, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0.5,2", help="GiB, comma separated")
    parser.add_argument("--backends", default="local,s3")
    parser.add_argument("--compression", default="zstd")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backend, size, url = json.loads(args.child)
        print(json.dumps(run_case(backend, size, url, args.compression)))
        return
    moto = start_moto() if "s3" in args.backends else None
    try:
        rows = []
        for backend in args.backends.split(","):
            for gib in args.sizes.split(","):
                size = int(float(gib) * 1024 * MIB)
                child = json.dumps([backend, size, moto.url if moto else None])
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.store_bench",
                        "--child",
                        child,
                        "--compression",
                        args.compression,
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
        print("\n| backend | compression | size MiB | wall s | MB/s | stored MiB | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['backend']} | {r['compression']} | {r['size_mib']} | {r['wall_s']} | {r['mb_s']} "
                f"| {r['stored_mib']} | {r['peak_rss_mib']} |"
            )
    finally:
        if moto:
            moto.stop()


if __name__ == "__main__":
    main()
