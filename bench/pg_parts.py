"""Where a PostgreSQL backup's time goes, piece by piece, on one throwaway server: the dump alone,
the dump through each compression setting of the store's codec, and each fingerprint algorithm
(with and without parallel workers). Used to choose the codec's defaults and the fingerprint.

    PYTHONPATH=. .venv/bin/python -m bench.pg_parts --scale 0.5
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import time

from bench.pg_bench import ROWS_PER_SCALE, generate


def _dump_through(argv: list[str], env: dict, encoder) -> tuple[float, int, int]:
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    raw = out = 0
    while chunk := proc.stdout.read(1024 * 1024):
        raw += len(chunk)
        if encoder is not None:
            out += len(encoder.update(chunk))
    if encoder is not None:
        out += len(encoder.finish())
    proc.wait()
    return time.monotonic() - start, raw, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=0.5)
    args = parser.parse_args()

    import psycopg

    from sandbox import services
    from tasks.components.postgres.fingerprint import _FINGERPRINT_SUMS, FINGERPRINT_ALGORITHM, fingerprint
    from tasks.models import Compression
    from tasks.storage import codec

    password = secrets.token_hex(16)
    src = services.start_postgres(password, "bench-parts")
    try:
        bindir = str(src.extra["bindir"])
        env = {**os.environ, "PGPASSWORD": password, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}
        env["PGPORT"] = str(src.port)
        psql = [f"{bindir}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        rows = max(1000, int(ROWS_PER_SCALE * args.scale))
        subprocess.run([*psql, "-d", "postgres", "-c", "CREATE DATABASE bench"], env=env, check=True)
        subprocess.run([*psql, "-d", "bench", "-c", generate(rows, 1)], env=env, check=True)
        subprocess.run([*psql, "-d", "bench", "-c", "VACUUM ANALYZE"], env=env, check=True)
        dump = [f"{bindir}/pg_dump", "-Fc", "-Z0", "-d", "bench"]
        print(f"{rows} rows\n\n| step | wall s | MiB in | MiB out |\n|---|---|---|---|")
        s, raw, _ = _dump_through(dump, env, None)
        print(f"| pg_dump -Fc -Z0, read by Python | {s:.2f} | {raw / 2**20:.0f} | |")
        for level in (1, 3):
            for threads in (0, -1):
                codec.ZSTD_THREADS = threads
                enc = codec.Encoder(Compression.zstd, None, level)
                s, raw, out = _dump_through(dump, env, enc)
                print(
                    f"| + Encoder zstd level {level} threads {threads} (and 2x sha256) | {s:.2f} "
                    f"| {raw / 2**20:.0f} | {out / 2**20:.0f} |"
                )
        url = f"host=127.0.0.1 port={src.port} user=postgres password={password} dbname=bench"
        for workers in (0, 2):
            for algorithm in [*_FINGERPRINT_SUMS, FINGERPRINT_ALGORITHM]:
                with psycopg.connect(url) as conn:
                    conn.execute(f"SET max_parallel_workers_per_gather = {workers}")
                    start = time.monotonic()
                    fingerprint(conn, algorithm)
                    print(
                        f"| fingerprint {algorithm}, {workers} workers | {time.monotonic() - start:.2f} | | |"
                    )
    finally:
        src.stop()
        shutil.rmtree(src.workdir.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
