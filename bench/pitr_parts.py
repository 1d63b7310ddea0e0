"""Where a PITR base backup's time goes, on one throwaway archiving cluster and moto kept running:
`pg_basebackup` to /dev/null (the floor), through the shell's `zstd -1 -T0` (and `sha256sum`),
and ours in-process to S3, to the local store, and to the local store without the read-back.
Every variant runs `--repeat` times, interleaved, so load drifts hit them all alike.

    PYTHONPATH=. .venv/bin/python -m bench.pitr_parts --scale 1 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import time

from bench.pg_bench import GENERATE, ROWS_PER_SCALE
from bench.pitr_bench import _psql, _switch_and_wait


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from blocks.pitr import PitrTarget
    from blocks.store import LocalStore
    from sandbox import services
    from sandbox.s3 import make_bucket, s3_store
    from tasks.components import postgres_pitr as pitr
    from tasks.components.postgres_pitr.engines import BarmanCloud, write_credentials_file
    from tasks.storage.session import backup_session

    password, bucket = secrets.token_hex(16), "pitr-parts"
    moto = services.start_moto()
    make_bucket(moto.url, bucket)
    fields = {"host": "127.0.0.1", "user": "postgres", "server_name": "pg", "archive_url": f"s3://{bucket}/pitr",
              "endpoint_url": moto.url, "region": "us-west-2",
              "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}  # fmt: skip
    work = services.session_dir("pitr-parts")
    shutil.chown(work, "postgres")
    archiver = PitrTarget(password=password, port=1, **fields)
    creds = write_credentials_file(archiver, work / "creds", "postgres")
    archive = BarmanCloud().archive_command(archiver, creds)
    conf = {"archive_mode": "on", "archive_command": "'" + archive.replace("'", "''") + "'"}
    src = services.start_postgres(password, "pitr-parts-src", conf)
    try:
        bindir, env = str(src.extra["bindir"]), {**os.environ, "PGPASSWORD": password}
        services.wait_until(lambda: _psql(bindir, src.port, env, "select 1") == "1", 60, "the cluster")
        _psql(bindir, src.port, env, GENERATE % max(1000, int(ROWS_PER_SCALE * args.scale)))
        _switch_and_wait(bindir, src.port, env)
        size = int(_psql(bindir, src.port, env, "select pg_database_size('postgres')"))
        print(f"database {size >> 20} MiB")
        target = PitrTarget(password=password, port=src.port, **fields)
        pg_env = {**env, "PGHOST": "127.0.0.1", "PGPORT": str(src.port), "PGUSER": "postgres"}
        basebackup = f"{bindir}/pg_basebackup -D - -Ft -X fetch --checkpoint=fast"

        def shell(cmd: str) -> float:
            start = time.monotonic()
            subprocess.run(cmd, shell=True, env=pg_env, check=True)  # noqa: S602 (our own command)
            return time.monotonic() - start

        def ours(store) -> float:
            start = time.monotonic()
            with backup_session(store, "postgres-pitr") as session:
                pitr.backup(target, session)
                session.commit()
            return time.monotonic() - start

        variants = {
            "floor: pg_basebackup > /dev/null": lambda i: shell(f"{basebackup} > /dev/null"),
            "pg_basebackup | zstd -1 -T0": lambda i: shell(f"{basebackup} | zstd -1 -T0 -q > /dev/null"),
            "pg_basebackup | zstd -1 -T0 | sha256sum": lambda i: shell(
                f"{basebackup} | zstd -1 -T0 -q | sha256sum > /dev/null"
            ),
            "ours, S3 (moto)": lambda i: ours(s3_store(moto.url, bucket)),
            "ours, local store": lambda i: ours(LocalStore(path=str(work / f"a{i}"))),
            "ours, local store, no read-back": lambda i: ours(
                LocalStore(path=str(work / f"b{i}"), verify_after_write=False)
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(args.repeat):
            for name, run in variants.items():
                times[name].append(run(i))
        floor = statistics.median(times["floor: pg_basebackup > /dev/null"])
        print("| variant | wall s | x floor (median) |\n|---|---|---|")
        for name, secs in times.items():
            runs = ", ".join(f"{s:.2f}" for s in secs)
            label = name.replace("|", "\\|")  # a markdown table cell
            print(f"| {label} | {runs} | {statistics.median(secs) / floor:.1f} |")
    finally:
        src.stop()
        moto.stop()


if __name__ == "__main__":
    main()
