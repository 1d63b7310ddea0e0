"""PostgreSQL backup/restore, side by side in one run, on throwaway servers (moto S3, two initdb
clusters): ours vs the runbook's `pg_dumpall | gzip > file` + upload vs the floor
`pg_dumpall > /dev/null`; restore ours vs `gunzip -c | psql`; plus the directory format with
`pg_restore -j 2` as the parallel reference. Wall time and peak RSS of the largest process.

    PYTHONPATH=. .venv/bin/python -m bench.pg_bench            # ~0.5 GB of SQL
    PYTHONPATH=. .venv/bin/python -m bench.pg_bench --scale 0.02   # a few seconds
    PYTHONPATH=. .venv/bin/python -m bench.pg_bench --repeat 3     # medians of 3, interleaved

Ours runs against both stores: moto's S3 (Python, on the same cores: CPU that real S3 would not
take from the engine) and the embedded local directory (no upload; read back after writing).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS_PER_SCALE = 2_400_000  # ~0.5 GB of pg_dumpall output at scale 1

WORDS = (
    "'order','payment','user','session','invoice','refund','timeout','retry','gateway','lambda',"
    "'function','cold','start','error','success','queue','message','bucket','region','knative',"
    "'revision','service','deploy','scale','replica','pod','node','cluster','trace','span'"
)
TABLE = f"""
CREATE TABLE {{table}} (id bigint PRIMARY KEY, account uuid NOT NULL, kind text NOT NULL,
  body text, amount numeric(12,2), at timestamptz NOT NULL);
INSERT INTO {{table}}
SELECT i, gen_random_uuid(),
  (ARRAY['signup','login','purchase','refund','logout'])[1 + floor(random() * 5)::int],
  md5(random()::text) || ' ' || (ARRAY[{WORDS}])[1 + floor(random() * 30)::int]
    || ' ' || (ARRAY[{WORDS}])[1 + floor(random() * 30)::int]
    || ' ' || (ARRAY[{WORDS}])[1 + floor(random() * 30)::int]
    || ' ' || encode(gen_random_bytes(24), 'base64') || ' ' || (random() * 1e6)::int,
  round((random() * 1000)::numeric, 2), now() - random() * interval '365 days'
FROM generate_series(1, {{rows}}) i;
CREATE INDEX {{table}}_account ON {{table}} (account);
CREATE INDEX {{table}}_at ON {{table}} (at);
"""


def generate(rows: int, tables: int) -> str:
    """The bench database: `rows` rows of realistic entropy, in one table `events` or spread over
    `tables` tables `events_1`... (the shape of a database of many mid-sized tables)."""
    names = ["events"] if tables == 1 else [f"events_{i}" for i in range(1, tables + 1)]
    body = "".join(TABLE.format(table=name, rows=rows // len(names)) for name in names)
    return "CREATE EXTENSION IF NOT EXISTS pgcrypto;\n" + body


def run_measured(stages: list[list[str]], env: dict, stdout_path: str | None = None) -> tuple[float, int]:
    """Run a pipeline of argv lists (no shell); return (seconds, peak RSS in MiB of the largest
    process). GNU time measures each stage: a child of this (large) Python would otherwise
    report the parent's high-water mark inherited through fork."""
    gnu_time = shutil.which("time") or "/usr/bin/time"
    rss_files = []
    start = time.monotonic()
    procs, prev = [], None
    for i, argv in enumerate(stages):
        last = i == len(stages) - 1
        out = (open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL) if last else subprocess.PIPE  # noqa: SIM115
        rss = tempfile.NamedTemporaryFile(suffix=".rss", delete=False)  # noqa: SIM115
        rss_files.append(rss.name)
        p = subprocess.Popen([gnu_time, "-f", "%M", "-o", rss.name, *argv], stdin=prev, stdout=out, env=env)
        if prev is not None:
            prev.close()
        prev = p.stdout
        procs.append(p)
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"{p.args[5]} failed with {p.returncode}")
    seconds = time.monotonic() - start
    peak = 0
    for name in rss_files:
        text = Path(name).read_text().strip().splitlines()
        peak = max(peak, int(text[-1]) if text else 0)
        os.unlink(name)
    return seconds, peak // 1024


def child(kind: str, spec: dict) -> None:
    """Ours, in a process of its own so its peak RSS is measured like the others."""
    import tasks.components.postgres as pg
    from blocks.postgres import PostgresTarget
    from sandbox.s3 import s3_store
    from tasks.storage.catalog import get_backup
    from tasks.storage.session import backup_session

    # timed from here too: a worker running the flow has its interpreter and imports already
    started = time.monotonic()
    if spec.get("local"):
        from blocks.store import LocalStore

        store = LocalStore(path=spec["local"])
    else:
        store = s3_store(spec["moto"], spec["bucket"])
    target = PostgresTarget(password=os.environ["KLB_BENCH_PGPASSWORD"], **spec["target"])
    if kind == "backup":
        with backup_session(store, "postgres") as session:
            pg.backup(target, session)
            session.commit()
        op_s = time.monotonic() - started
        print(json.dumps({"id": session.manifest.id, "stored": session.manifest.size, "op_s": op_s}))
    else:
        manifest = get_backup(store, spec["id"])
        opts = pg.RestoreOptions(
            databases=["bench"], rename_to={"bench": spec["into"]}, include_globals=False
        )
        report = pg.restore(target, manifest, store, opts)
        print(json.dumps({**report, "op_s": time.monotonic() - started}, default=str))


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


UPLOAD = "import sys,boto3;boto3.client('s3',endpoint_url=sys.argv[1],region_name='us-west-2',aws_access_key_id='testing',aws_secret_access_key='testing').upload_file(sys.argv[3],sys.argv[2],sys.argv[4])"  # noqa: E501
DOWNLOAD = UPLOAD.replace(
    "upload_file(sys.argv[3],sys.argv[2],sys.argv[4])", "download_file(sys.argv[2],sys.argv[4],sys.argv[3])"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = ~0.5 GB of SQL")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each fast pipeline (median shown)")
    parser.add_argument("--tables", type=int, default=1, help="spread the rows over this many tables")
    parser.add_argument("--child", choices=["backup", "restore"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(args.spec))
        return

    from sandbox import services
    from sandbox.s3 import make_bucket

    password = secrets.token_hex(16)
    src = services.start_postgres(password, "bench-src")
    dst = services.start_postgres(password, "bench-dst")
    moto = services.start_moto()
    work = Path(tempfile.mkdtemp(prefix="pg-bench-"))
    results: dict[str, dict] = {}
    try:
        bindir = str(src.extra["bindir"])
        env = {**os.environ, "PGPASSWORD": password, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}
        src_env, dst_env = {**env, "PGPORT": str(src.port)}, {**env, "PGPORT": str(dst.port)}
        psql = [f"{bindir}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]

        def run_sql(cluster_env: dict, statement: str, db: str = "postgres") -> None:
            subprocess.run([*psql, "-d", db, "-c", statement], env=cluster_env, check=True)

        rows = max(1000, int(ROWS_PER_SCALE * args.scale))
        t0 = time.monotonic()
        run_sql(src_env, "CREATE DATABASE bench")
        run_sql(src_env, generate(rows, args.tables), "bench")
        size = subprocess.run(
            [*psql, "-d", "bench", "-At", "-c", "SELECT pg_database_size('bench')"],
            env=src_env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        took = time.monotonic() - t0
        print(f"generated {rows} rows in {args.tables} table(s), {int(size) / 2**20:.0f} MiB in {took:.1f}s")
        # autovacuum of the fresh table would otherwise run beside the first measured pipelines
        run_sql(src_env, "VACUUM ANALYZE", "bench")

        def settle() -> None:
            """Each pipeline starts with no dirty buffers left by the one before to write."""
            for cluster_env in (src_env, dst_env):
                run_sql(cluster_env, "CHECKPOINT")

        for bucket in ("ours", "runbook"):
            make_bucket(moto.url, bucket)

        dumpall = [f"{bindir}/pg_dumpall", "-l", "postgres"]
        secs, rss = run_measured([dumpall], src_env, str(work / "plain.sql"))
        sql_bytes = (work / "plain.sql").stat().st_size
        (work / "plain.sql").unlink()

        gz = work / "backup.sql.gz"
        secs, rss = run_measured([dumpall, ["gzip"]], src_env, str(gz))
        up_s, up_rss = run_measured([_python(UPLOAD, moto.url, "runbook", str(gz), "backup.sql.gz")], env)
        record(
            results,
            "runbook: pg_dumpall, gzip to file, upload",
            secs + up_s,
            max(rss, up_rss),
            gz.stat().st_size,
            f"dump {secs:.1f}s + upload {up_s:.1f}s",
        )
        dl = work / "dl.sql.gz"
        dl_s, dl_rss = run_measured([_python(DOWNLOAD, moto.url, "runbook", str(dl), "backup.sql.gz")], env)
        secs, rss = run_measured([["gunzip", "-c", str(dl)], [*psql[:-2], "-d", "postgres"]], dst_env)
        record(
            results,
            "restore runbook: download, gunzip -c, psql",
            dl_s + secs,
            max(rss, dl_rss),
            None,
            f"download {dl_s:.1f}s + psql {secs:.1f}s",
        )

        # the parallel reference: directory format cannot stream (it needs a directory on disk)
        d = work / "dirfmt"
        secs, rss = run_measured(
            [[f"{bindir}/pg_dump", "-Fd", "-j", "2", "-Z", "0", "-f", str(d), "-d", "bench"]], src_env
        )
        record(results, "reference: pg_dump -Fd -j 2 (local dir, no upload)", secs, rss)

        spec = {
            "moto": moto.url,
            "bucket": "ours",
            "target": {
                "host": "127.0.0.1",
                "port": src.port,
                "user": "postgres",
                "bin_dir": bindir,
                "databases": ["bench"],
            },
        }
        ours_env = {**os.environ, "KLB_BENCH_PGPASSWORD": password, "PYTHONPATH": str(ROOT)}
        me = [sys.executable, "-m", "bench.pg_bench"]
        out = work / "ours.json"
        stores = {"S3 (moto)": {}, "local store": {"local": str(work / "store")}}

        def ours(kind: str, this: dict) -> tuple[float, int, dict, dict]:
            """(seconds, peak RSS, the child's result, moto's CPU as a phase when on S3)."""
            before = cpu_seconds(moto.proc.pid)
            secs, rss = run_measured([[*me, "--child", kind, "--spec", json.dumps(this)]], ours_env, str(out))
            result = json.loads(out.read_text().strip().splitlines()[-1])
            # CPU of these two cores that real S3 would not take
            moto_cpu = {} if "local" in this else {"moto CPU": cpu_seconds(moto.proc.pid) - before}
            return secs, rss, result, moto_cpu

        # the first large restore into a cluster ran 10 to 25 % slower than later ones (seen at
        # scale 4, alike for ours and the reference): one unmeasured restore first, so that
        # whichever is measured first is not the one that pays for it
        run_sql(dst_env, "CREATE DATABASE bench_warmup")
        run_measured([[f"{bindir}/pg_restore", "-j", "2", "-d", "bench_warmup", str(d)]], dst_env)
        run_sql(dst_env, "DROP DATABASE bench_warmup")

        # interleaved: each round runs every fast pipeline once, so drifting load hits all alike
        for round_ in range(args.repeat):
            settle()
            secs, rss = run_measured([dumpall], src_env)
            record(results, "floor: pg_dumpall to /dev/null", secs, rss)
            for label, where in stores.items():
                settle()
                secs, rss, backup, moto_cpu = ours("backup", {**spec, **where})
                record(
                    results,
                    f"ours, {label}: backup",
                    secs,
                    rss,
                    backup["stored"],
                    op_s=backup["op_s"],
                    phases=moto_cpu,
                )
                into = f"bench_ours{round_}_{len(where)}"
                this = {
                    **spec,
                    **where,
                    "id": backup["id"],
                    "into": into,
                    "target": {**spec["target"], "port": dst.port},
                }
                settle()
                secs, rss, restored, moto_cpu = ours("restore", this)
                phases = {**restored["databases"][into].get("seconds", {}), **moto_cpu}
                record(
                    results,
                    f"ours, {label}: restore (checked as it streams, fingerprint, post-data -j)",
                    secs,
                    rss,
                    op_s=restored["op_s"],
                    phases=phases,
                )
                run_sql(dst_env, f'DROP DATABASE "{into}"')
            ref_db = f"bench_dir{round_}"
            run_sql(dst_env, f"CREATE DATABASE {ref_db}")
            # one pg_restore -j 2 as the reference; the same split in two calls (its data, then
            # post-data) beside it, to set against our load and fingerprint+post_data phases
            pg_restore = [f"{bindir}/pg_restore", "-j", "2", "--exit-on-error", "-d", ref_db]
            settle()
            secs, rss = run_measured([[*pg_restore, str(d)]], dst_env)
            record(results, "reference: pg_restore -j 2 from local dir", secs, rss)
            run_sql(dst_env, f"DROP DATABASE {ref_db}")
            run_sql(dst_env, f"CREATE DATABASE {ref_db}")
            settle()
            load_s, _ = run_measured([[*pg_restore, "--section=pre-data", "--section=data", str(d)]], dst_env)
            post_s, _ = run_measured([[*pg_restore, "--section=post-data", str(d)]], dst_env)
            record(
                results,
                "reference, split: pg_restore -j 2 pre-data+data, then post-data",
                load_s + post_s,
                0,
                phases={"load": load_s, "post_data": post_s},
            )
            run_sql(dst_env, f"DROP DATABASE {ref_db}")
    finally:
        for svc in (moto, dst, src):
            svc.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(src.workdir.parent, ignore_errors=True)

    report(results, args, sql_bytes)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (moto's server: the S3 side of our runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def record(
    results: dict,
    name: str,
    s: float,
    rss: int,
    stored: int | None = None,
    detail: str = "",
    op_s: float | None = None,
    phases: dict | None = None,
) -> None:
    r = results.setdefault(name, {"s": [], "rss": 0, "op_s": [], "phases": [], "detail": detail})
    r["s"].append(s)
    r["rss"] = max(r["rss"], rss)
    if stored is not None:
        r["bytes"] = stored
    if op_s is not None:
        r["op_s"].append(op_s)
    if phases:
        r["phases"].append(phases)


def _spread(values: list[float]) -> str:
    mid = statistics.median(values)
    return f"{mid:.1f}" if len(values) == 1 else f"{mid:.1f} ({min(values):.1f}-{max(values):.1f})"


def report(results: dict, args: argparse.Namespace, sql_bytes: int) -> None:
    med = {name: statistics.median(r["s"]) for name, r in results.items()}
    in_proc = {name: statistics.median(r["op_s"]) for name, r in results.items() if r["op_s"]}
    print(f"\nscale {args.scale}: {sql_bytes / 2**20:.0f} MiB of SQL (pg_dumpall); median of {args.repeat}\n")
    print(
        "| pipeline | wall s | in-process s | peak RSS MiB | stored MiB | notes |\n|---|---|---|---|---|---|"
    )
    for name, r in results.items():
        stored = f"{r['bytes'] / 2**20:.0f}" if "bytes" in r else ""
        inner = _spread(r["op_s"]) if r["op_s"] else ""
        notes = r["detail"]
        if r["phases"]:
            keys = r["phases"][0]
            notes = ", ".join(f"{k} {statistics.median(p[k] for p in r['phases']):.1f}s" for k in keys)
        print(f"| {name} | {_spread(r['s'])} | {inner} | {r['rss']} | {stored} | {notes} |")
    floor = med["floor: pg_dumpall to /dev/null"]
    runbook = med["runbook: pg_dumpall, gzip to file, upload"]
    ref = med["reference: pg_restore -j 2 from local dir"]
    print("\n| ratio (medians) | goal | whole process | in-process (imports done, as in a worker) |")
    print("|---|---|---|---|")
    for label in ("S3 (moto)", "local store"):
        b, r = (
            f"ours, {label}: backup",
            f"ours, {label}: restore (checked as it streams, fingerprint, post-data -j)",
        )
        print(f"| {label}: backup / floor | <= 2.0 | {med[b] / floor:.2f} | {in_proc[b] / floor:.2f} |")
        by_runbook = f"{med[b] / runbook:.2f} | {in_proc[b] / runbook:.2f}"
        print(f"| {label}: backup / runbook backup | <= 0.17 | {by_runbook} |")
        print(
            f"| {label}: restore / pg_restore -j 2 | <= 1.0 | {med[r] / ref:.2f} | {in_proc[r] / ref:.2f} |"
        )


if __name__ == "__main__":
    main()
