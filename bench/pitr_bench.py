"""PITR side by side in one run, on a throwaway archiving cluster (barman-cloud-wal-archive into
moto S3): the base backup (ours vs `pg_basebackup -Ft -X fetch` to local disk) and the recovery
to a target time (ours vs the floor: untar, start, replay with `restore_command = cp` from a
local directory that already holds every WAL segment). Wall time; peak RSS of ours.

    PYTHONPATH=. .venv/bin/python -m bench.pitr_bench            # ~0.5 GB database
    PYTHONPATH=. .venv/bin/python -m bench.pitr_bench --scale 0.05
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.pg_bench import ROOT, ROWS_PER_SCALE, generate, run_measured

# WAL after the base backup: about 2 GB at scale 1 with a third of the rows updated and a quarter
# copied; these fractions give a few hundred MB, closer to the 181 MB
MORE_WAL = "UPDATE events SET amount = amount + 1 WHERE id %% 20 = 0; INSERT INTO events SELECT id + %s, account, kind, body, amount, at FROM events WHERE id %% 40 = 0"  # noqa: E501


def child(kind: str, spec: dict) -> None:
    """Ours, in a process of its own so its peak RSS is measured like the others."""
    from datetime import datetime

    from blocks.pitr import PitrTarget
    from sandbox.s3 import s3_store
    from tasks.components import postgres_pitr as pitr
    from tasks.components.postgres_pitr.targets import RecoveryTarget
    from tasks.storage.catalog import get_backup
    from tasks.storage.session import backup_session

    # timed from here: a worker running the flow has its interpreter and imports already
    started = time.monotonic()
    store = s3_store(spec["moto"], spec["bucket"])
    target = PitrTarget(password=os.environ["KLB_BENCH_PGPASSWORD"], **spec["target"])
    if kind == "backup":
        with backup_session(store, "postgres-pitr") as session:
            pitr.backup(target, session)
            session.commit()
        print(json.dumps({"id": session.manifest.id, "op_s": time.monotonic() - started}))
        return
    goal = RecoveryTarget(kind="time", time=datetime.fromisoformat(spec["T"]))
    manifest = get_backup(store, spec["id"])
    result = pitr.recover(target, manifest, store, goal, pitr.RestoreOptions(directory=spec["dir"]))
    op_s = time.monotonic() - started
    pitr.stop_instance(spec["dir"])
    spooled = len(result["wal_restored"]["from_spool"])
    print(json.dumps({"spool": spooled, "op_s": op_s, **result}, default=str))


def _psql(bindir: str, port: int, env: dict, sql: str, db: str = "postgres") -> str:
    return subprocess.run(
        [f"{bindir}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
         "-U", "postgres", "-d", db, "-c", sql],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def _switch_and_wait(bindir: str, port: int, env: dict) -> None:
    seg = _psql(bindir, port, env, "select pg_walfile_name(pg_current_wal_lsn())")
    _psql(bindir, port, env, "select pg_switch_wal()")
    deadline = time.monotonic() + 600
    while (_psql(bindir, port, env, "select last_archived_wal from pg_stat_archiver") or "") < seg:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{seg} was not archived in 600 s")
        time.sleep(0.2)


def _floor_restore(bindir: str, work: Path, base_tar: Path, wal_dir: Path, target_time: str) -> float:
    """untar + start + replay to T with `cp` from a local directory, as the postgres user."""
    data = work / "floor-data"
    as_pg = ["runuser", "-u", "postgres", "--"]
    start = time.monotonic()
    data.mkdir(mode=0o700)
    shutil.chown(data, "postgres")
    subprocess.run([*as_pg, "tar", "-x", "-f", str(base_tar), "-C", str(data)], check=True)
    port = str(_free_port())
    with open(data / "postgresql.auto.conf", "a") as fh:
        fh.write(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{work}'\n"
            f"archive_mode = off\nrestore_command = 'cp {wal_dir}/%f %p'\n"
            f"recovery_target_time = '{target_time}'\nrecovery_target_action = 'pause'\n"
        )
    (data / "recovery.signal").touch()
    subprocess.run(
        [*as_pg, f"{bindir}/pg_ctl", "start", "-D", str(data), "-l", str(work / "floor.log"), "-w"],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {**os.environ, "PGHOST": str(work), "PGPORT": port, "PGUSER": "postgres"}
    while True:
        out = subprocess.run(
            [*as_pg, "env", f"PGHOST={work}", f"PGPORT={port}", f"{bindir}/psql", "-At", "-d", "postgres",
             "-c", "select pg_get_wal_replay_pause_state()"],
            capture_output=True, text=True, env=env,
        ).stdout.strip()  # fmt: skip
        if out == "paused":
            break
        time.sleep(0.05)
    seconds = time.monotonic() - start
    subprocess.run(
        [*as_pg, f"{bindir}/pg_ctl", "stop", "-D", str(data), "-m", "immediate"], capture_output=True
    )
    return seconds


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ArchivingCluster:
    """A throwaway PostgreSQL cluster archiving its WAL (barman-cloud) into a moto bucket, with
    the bench table generated and its WAL switched out."""

    moto: Any
    bucket: str
    password: str
    fields: dict[str, Any]  # PitrTarget's fields, the S3 keys and the cluster's port included
    src: Any
    work: Path
    rows: int

    @property
    def bindir(self) -> str:
        return str(self.src.extra["bindir"])

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password}

    def target(self):
        from blocks.pitr import PitrTarget

        return PitrTarget(password=self.password, **self.fields)


@contextmanager
def archiving_cluster(name: str, scale: float) -> Iterator[ArchivingCluster]:
    """Start moto and the cluster, generate `scale` of the bench table; stop and remove both after."""
    from blocks.pitr import PitrTarget
    from sandbox import services
    from sandbox.s3 import make_bucket
    from tasks.components.postgres_pitr.engines import BarmanCloud, write_credentials_file

    password, bucket = secrets.token_hex(16), name
    moto = services.start_moto()
    make_bucket(moto.url, bucket)
    fields = {"host": "127.0.0.1", "port": 1, "user": "postgres", "server_name": "pg",
              "archive_url": f"s3://{bucket}/pitr", "endpoint_url": moto.url, "region": "us-west-2",
              "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}  # fmt: skip
    work = services.session_dir(name)
    shutil.chown(work, "postgres")
    archiver = PitrTarget(password=password, **fields)
    archive = BarmanCloud().archive_command(
        archiver, write_credentials_file(archiver, work / "credentials", "postgres")
    )
    conf = {"archive_mode": "on", "archive_command": "'" + archive.replace("'", "''") + "'"}
    src = services.start_postgres(password, f"{name}-src", extra_conf=conf)
    try:
        rows = max(1000, int(ROWS_PER_SCALE * scale))
        cluster = ArchivingCluster(moto, bucket, password, {**fields, "port": src.port}, src, work, rows)
        bindir, env = cluster.bindir, cluster.env
        services.wait_until(lambda: _psql(bindir, src.port, env, "select 1") == "1", 60, f"{name} cluster")
        _psql(bindir, src.port, env, generate(rows, 1))
        _switch_and_wait(bindir, src.port, env)
        size = int(_psql(bindir, src.port, env, "select pg_database_size('postgres')"))
        print(f"generated {rows} rows, database {size / 2**20:.0f} MiB")
        yield cluster
    finally:
        src.stop()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(src.workdir.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--child", choices=["backup", "recover"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if os.environ.get("KLB_BENCH_PROFILE"):  # where ours spends its time, on stderr
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(child, args.child, json.loads(args.spec))
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(
                "tasks/|proc|time.sleep", 40
            )
            return
        child(args.child, json.loads(args.spec))
        return

    from tasks.components.postgres_pitr.engines import BarmanCloud

    results: dict[str, dict] = {}
    with archiving_cluster("pitr-bench", args.scale) as cluster:
        moto, bucket, password, src = cluster.moto, cluster.bucket, cluster.password, cluster.src
        work, bindir, env, rows = cluster.work, cluster.bindir, cluster.env, cluster.rows
        target = cluster.target()
        base_tar = work / "floor-base"
        pg_env = {**env, "PGHOST": "127.0.0.1", "PGPORT": str(src.port), "PGUSER": "postgres"}
        basebackup = [
            f"{bindir}/pg_basebackup",
            "-D",
            str(base_tar),
            "-Ft",
            "-X",
            "fetch",
            "--checkpoint=fast",
        ]
        secs, rss = run_measured([basebackup], pg_env)
        results["floor: pg_basebackup -Ft -X fetch to local disk"] = {"s": secs, "rss": rss}

        spec = {"moto": moto.url, "bucket": bucket, "target": cluster.fields}
        ours_env = {**os.environ, "KLB_BENCH_PGPASSWORD": password, "PYTHONPATH": str(ROOT)}
        me = [sys.executable, "-m", "bench.pitr_bench"]
        out = work / "ours.json"
        secs, rss = run_measured([[*me, "--child", "backup", "--spec", json.dumps(spec)]], ours_env, str(out))
        made = json.loads(out.read_text().strip().splitlines()[-1])
        base_id = made["id"]
        results["ours: base backup (pg_basebackup stream, zstd, S3)"] = {
            "s": made["op_s"],
            "rss": rss,
            "detail": f"{secs:.1f} s with interpreter start and imports",
        }

        lsn0 = _psql(bindir, src.port, env, "select pg_current_wal_lsn()")
        _psql(bindir, src.port, env, MORE_WAL % (rows * 2))
        target_time = _psql(bindir, src.port, env, "select clock_timestamp()")
        _psql(bindir, src.port, env, "insert into events select id + %s, account, kind, body, amount, at "
              "from events where id < 1000" % (rows * 10))  # fmt: skip
        _switch_and_wait(bindir, src.port, env)
        wal_bytes = int(_psql(bindir, src.port, env, f"select pg_current_wal_lsn() - '{lsn0}'::pg_lsn"))
        print(f"{wal_bytes / 2**20:.0f} MiB of WAL after the base backup; target {target_time}")

        # the floor's WAL is local already (its download is not timed): every archived segment
        wal_dir = work / "floor-wal"
        wal_dir.mkdir()
        with BarmanCloud().reader(target) as archive:
            for name in archive.names:
                if len(name) == 24:
                    archive.fetch(name, wal_dir / name)
        subprocess.run(["chown", "-R", "postgres", str(wal_dir), str(base_tar)], check=True)
        tar = base_tar / "base.tar"
        results["floor restore: untar, start, replay to T with cp from local WAL"] = {
            "s": _floor_restore(bindir, work, tar, wal_dir, target_time),
            "rss": 0,
        }
        spec = {**spec, "id": base_id, "T": target_time, "dir": str(work / "ours-restore")}
        secs, rss = run_measured(
            [[*me, "--child", "recover", "--spec", json.dumps(spec)]], ours_env, str(out)
        )
        rec = json.loads(out.read_text().strip().splitlines()[-1])
        results["ours: recover to T (download, untar, replay, WAL prefetch)"] = {
            "s": rec["op_s"],
            "rss": rss,
            "detail": f"{secs:.1f} s with interpreter start and imports; {rec['spool']} segments from "
            f"the spool; asked of the fetcher: {rec['wal_restored']['from_fetcher']}, not archived: "
            f"{rec['wal_restored']['not_archived']}; fallback: {rec['wal_restored']['fallback']}",
        }

    floor_b = results["floor: pg_basebackup -Ft -X fetch to local disk"]["s"]
    floor_r = results["floor restore: untar, start, replay to T with cp from local WAL"]["s"]
    print(
        f"\nscale {args.scale}\n\n| step | wall s | x floor | peak RSS MiB | notes |\n|---|---|---|---|---|"
    )
    for name, r in results.items():
        floor = floor_b if "backup" in name else floor_r
        print(f"| {name} | {r['s']:.1f} | {r['s'] / floor:.1f} | {r['rss'] or ''} | {r.get('detail', '')} |")


if __name__ == "__main__":
    main()
