"""Where a PITR base backup's time goes, on one throwaway archiving cluster and moto kept running:
`pg_basebackup` to /dev/null (the floor), through the shell's `zstd -1 -T0` (and `sha256sum`),
and ours in-process to S3, to the local store, and to the local store without the read-back.
Every variant runs `--repeat` times, interleaved, so load drifts hit them all alike.

    PYTHONPATH=. .venv/bin/python -m bench.pitr_parts --scale 1 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from bench.pitr_bench import archiving_cluster


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from blocks.store import LocalStore
    from sandbox.s3 import s3_store
    from tasks.components import postgres_pitr as pitr
    from tasks.storage.session import backup_session

    with archiving_cluster("pitr-parts", args.scale) as cluster:
        bindir, env, port, work = cluster.bindir, cluster.env, cluster.src.port, cluster.work
        target = cluster.target()
        pg_env = {**env, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "postgres"}
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
            "ours, S3 (moto)": lambda i: ours(s3_store(cluster.moto.url, cluster.bucket)),
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


if __name__ == "__main__":
    main()
