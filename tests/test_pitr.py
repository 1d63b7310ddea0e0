"""PostgreSQL PITR against a real archiving cluster: barman-cloud-wal-archive into moto S3.

History written once (module scope), in this order:
  rows 'before'   -> base backup -> rows 'between-1' -> WAL switch -> rows 'between-2'
  -> T (target)  -> WAL switch -> rows 'after' -> WAL switch
"""

from __future__ import annotations

import importlib
import io
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from blocks.pitr import PitrTarget
from blocks.store import S3Store
from sandbox import s3, services
from tasks.components import postgres_pitr as pitr
from tasks.components.postgres_pitr import prefetch
from tasks.components.postgres_pitr.engines import (
    BarmanCloud,
    aws_engine_env,
    segment_name,
    segment_number,
    server_env,
    write_credentials_file,
)
from tasks.components.postgres_pitr.targets import RecoveryTarget, parse_target
from tasks.components.postgres_pitr.window import choose_base_backup
from tasks.errors import BadInput, ComponentFailed, ConfigurationError, IntegrityError, NotFound
from tasks.models import Manifest
from tasks.proc import free_port, run
from tasks.storage.health import damaged_ids, is_damage
from tasks.storage.session import backup_session, read_object
from tasks.verbs import verify_component_backup

REGION = "us-west-2"


def _s3(moto):
    return s3.client(moto.url)


def _store(moto, bucket: str, prefix: str = "backups") -> S3Store:
    return s3.s3_store(moto.url, bucket, prefix=prefix)


def _sql(svc, sql: str, params=None):
    with psycopg.connect(
        host="127.0.0.1", port=svc.port, user="postgres", password=svc.extra["password"], autocommit=True
    ) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


def _switch_and_wait(svc) -> str:
    """Close the current segment and wait until the server reports it archived."""
    seg = _sql(svc, "select pg_walfile_name(pg_current_wal_lsn())")[0][0]
    _sql(svc, "select pg_switch_wal()")
    services.wait_until(
        lambda: (_sql(svc, "select last_archived_wal from pg_stat_archiver")[0][0] or "") >= seg,
        60,
        f"archiving of {seg}",
        log=svc.workdir / "server.log",
    )
    return seg


def _archiving_cluster(request, moto, name: str):
    """A cluster archiving to a bucket of its own: (server, its PitrTarget, bucket, credentials)."""
    bucket = "pitr-" + secrets.token_hex(4)
    s3.make_bucket(moto.url, bucket)
    password = "pw-" + secrets.token_hex(8)
    target = PitrTarget(
        host="127.0.0.1",
        port=1,  # set below
        password=password,
        server_name="pg",
        archive_url=f"s3://{bucket}/pitr",
        endpoint_url=moto.url,
        region=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    aws_dir = services.session_dir("pitr-aws")
    shutil.chown(aws_dir, "postgres")
    creds = write_credentials_file(target, aws_dir / "credentials", "postgres")
    archive_command = BarmanCloud().archive_command(target, creds)
    svc = services.start_postgres(
        password,
        name,
        extra_conf={
            "archive_mode": "on",
            "archive_command": "'" + archive_command.replace("'", "''") + "'",
            "track_commit_timestamp": "on",  # lets the test know each row's commit time
            "autovacuum": "off",  # no background transactions: the last commit is ours
            "shared_buffers": "'144MB'",  # production's: the recovered instance must not take it
        },
    )
    request.addfinalizer(svc.stop)
    # the port opens before the server accepts connections
    services.wait_until(
        lambda: _sql(svc, "select 1"), 30, "PITR source cluster", log=svc.workdir / "server.log"
    )
    return svc, target.model_copy(update={"port": svc.port}), bucket, creds


@pytest.fixture(scope="module")
def bench(request, moto):
    """An archiving cluster, its PitrTarget, a store, one base backup and a known history."""
    svc, target, bucket, creds = _archiving_cluster(request, moto, "pitr-source")
    store = _store(moto, bucket)
    _sql(svc, "create table t (id serial primary key, phase text not null)")
    _sql(svc, "insert into t (phase) select 'before' from generate_series(1, 5)")
    _switch_and_wait(svc)
    with backup_session(store, "postgres-pitr") as session:
        pitr.backup(target, session)
        session.commit()
    base = session.manifest
    _sql(svc, "insert into t (phase) select 'between-1' from generate_series(1, 5)")
    gap_segment = _switch_and_wait(svc)
    _sql(svc, "insert into t (phase) select 'between-2' from generate_series(1, 5)")
    target_time = _sql(svc, "select clock_timestamp()")[0][0]
    target_lsn = _sql(svc, "select pg_current_wal_lsn()::text")[0][0]
    _sql(svc, "select pg_create_restore_point('before-after')")  # not a transaction
    _switch_and_wait(svc)
    _sql(svc, "insert into t (phase) select 'after' from generate_series(1, 5)")
    last_commit = _sql(svc, "select max(pg_xact_commit_timestamp(xmin)) from t")[0][0]
    _switch_and_wait(svc)
    return {
        "svc": svc,
        "target": target,
        "store": store,
        "base": base,
        "T": target_time,
        "T_lsn": target_lsn,
        "last_commit": last_commit,
        "gap_segment": gap_segment,
        "bucket": bucket,
        "creds": creds,
    }


@pytest.fixture
def new_dir():
    """A fresh directory path for a recovered instance; its server is stopped afterwards."""
    path = services.session_dir("pitr-restores") / secrets.token_hex(4)
    yield str(path)
    if (path / pitr.STATE_FILE).exists():
        pitr.stop_instance(str(path))
    shutil.rmtree(path, ignore_errors=True)


def _phases(port: int, password: str) -> dict[str, int]:
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=password) as conn:
        return dict(conn.execute("select phase, count(*) from t group by phase").fetchall())


# ---- configuration and the base backup --------------------------------------------------------


def test_check_config_reports_archiving(bench):
    report = pitr.check_config(bench["target"])
    assert report["pitr_possible"], report["problems"]
    assert report["settings"]["archive_mode"] == "on"
    assert report["settings"]["wal_level"] == "replica"
    assert "barman-cloud-wal-archive" in report["settings"]["archive_command"]
    assert "testing" not in report["settings"]["archive_command"]  # secrets live in the file only
    last = _sql(bench["svc"], "select last_archived_wal from pg_stat_archiver")[0][0]
    assert report["archiver"]["last_archived_wal"] == last


def test_pitr_not_possible_without_archiving(postgres, moto):
    """The session cluster has archive_mode off: the check says so and no base backup is stored."""
    services.wait_until(lambda: _sql(postgres, "select 1"), 30, "session PostgreSQL")  # port opens first
    target = PitrTarget(
        port=postgres.port, password=postgres.extra["password"], archive_url="s3://nowhere/pitr"
    )
    report = pitr.check_config(target)
    assert not report["pitr_possible"]
    with pytest.raises(ConfigurationError, match="PITR not possible: archive_mode is off"):
        pitr.require_archiving(report)
    bucket = "pitr-off-" + secrets.token_hex(4)
    s3.make_bucket(moto.url, bucket)
    store = _store(moto, bucket)
    with (
        pytest.raises(ConfigurationError, match="archive_mode is off"),
        backup_session(store, "postgres-pitr") as s,
    ):
        pitr.backup(target, s)
        s.commit()
    assert _s3(moto).list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_base_backup_manifest_records_the_wal_range(bench):
    e = bench["base"].engine
    assert e["timeline"] == 1
    assert pitr.parse_lsn(e["start_lsn"]) < pitr.parse_lsn(e["stop_lsn"])
    assert e["first_segment"] <= e["last_segment"]
    assert datetime.fromisoformat(e["begin_time"]) <= datetime.fromisoformat(e["end_time"])
    assert bench["base"].source_time == datetime.fromisoformat(e["end_time"])
    assert e["pg_manifest"] is True  # pg_basebackup's own manifest was in the stream
    assert bench["base"].object(pitr.BASE_OBJECT).raw_size > 1_000_000


# ---- the window -------------------------------------------------------------------------------


def test_window_matches_what_the_engine_and_server_report(bench, monkeypatch):
    report = pitr.wal_archive(bench["target"], bench["store"])
    assert report.missing_segments == []
    (window,) = report.windows
    # the server's own record of what it archived
    last = _sql(bench["svc"], "select last_archived_wal from pg_stat_archiver")[0][0]
    assert report.last_archived_segment == last == window.last_segment
    # barman-cloud's own catalog, asked in-process
    from barman.cloud import CloudBackupCatalog
    from barman.cloud_providers.aws_s3 import S3CloudInterface

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    iface = S3CloudInterface(url=bench["target"].archive_url, endpoint_url=bench["target"].endpoint_url)
    engine_wal = CloudBackupCatalog(iface, "pg").get_wal_paths()
    assert report.wal_files == len(engine_wal)
    assert max(w for w in engine_wal if len(w) == 24) == window.last_segment
    # starts where the base backup ended, ends at the last commit (exactly, to the microsecond)
    assert window.start_time == bench["base"].source_time
    assert window.start_lsn == bench["base"].engine["stop_lsn"]
    assert window.end_time == bench["last_commit"]
    assert [b.id for b in window.base_backups] == [bench["base"].id]


def _catalogued_copy(bench, moto, bucket: str, prefix: str, target: PitrTarget) -> tuple[S3Store, Manifest]:
    """A store cataloguing the bench's base backup for a copy of its archive (`target`), and
    that catalogue entry."""
    store = _store(moto, bucket, prefix=prefix)
    with backup_session(store, "postgres-pitr") as s:
        s.write(pitr.BASE_OBJECT, [b"unused by this test"])
        s.engine.update({**bench["base"].engine, "archive_url": target.archive_url})
        s.source_time = bench["base"].source_time
        return store, s.commit()


def _archive_with_a_gap(bench, moto) -> PitrTarget:
    """A copy of the bench's archive without its `gap_segment` (segments after it kept)."""
    client, bucket = _s3(moto), bench["bucket"]
    for obj in client.list_objects_v2(Bucket=bucket, Prefix="pitr/pg/")["Contents"]:
        if bench["gap_segment"] not in obj["Key"]:
            client.copy_object(
                Bucket=bucket,
                Key=obj["Key"].replace("pitr/pg/", "gap/pg/", 1),
                CopySource={"Bucket": bucket, "Key": obj["Key"]},
            )
    return bench["target"].model_copy(update={"archive_url": f"s3://{bucket}/gap"})


def test_archive_with_a_missing_segment_ends_the_window_before_it(prefect_server, bench, moto, new_dir):
    """A copy of the archive without one segment: the window stops before the gap, and 'latest'
    (which would stop at the gap, without the WAL archived after it) is refused."""
    gap, bucket = bench["gap_segment"], bench["bucket"]
    target = _archive_with_a_gap(bench, moto)
    store, _ = _catalogued_copy(bench, moto, bucket, "gap-catalog", target)
    report = pitr.wal_archive(target, store)
    assert report.missing_segments == [gap]
    window = report.windows[0]
    tli, segno = segment_number(gap, 16 * 1024 * 1024)
    assert window.last_segment == segment_name(tli, segno - 1, 16 * 1024 * 1024)
    assert window.end_time is None  # nothing committed between the backup's end and the gap
    from flows.pitr import pitr_postgres

    with pytest.raises(BadInput, match=f"missing WAL segments: {gap}") as err:
        pitr_postgres(bench["T"], new_dir, target=target, store=store)
    assert "Nothing was changed" in str(err.value)
    assert not Path(new_dir).exists()
    # 'latest' is the newest archived state: here it cannot be reached, and is refused, not
    # quietly taken to mean the end of the base backup's stretch
    with pytest.raises(BadInput, match=f"'latest' cannot be reached: WAL segment {gap} is missing") as err:
        pitr.plan(target, store, parse_target("latest"))
    assert "Nothing was changed" in str(err.value)


def test_a_recovery_to_latest_that_stops_before_the_archive_ends_fails(bench, moto, new_dir):
    """Bypass the plan: a segment the server cannot get (a gap, an S3 error on it) ends a
    recovery to 'latest' there, and the server promotes itself: success was reported, without
    the WAL archived after it (the 'between-2' and 'after' rows). The recovery must fail."""
    target = _archive_with_a_gap(bench, moto)
    options = pitr.RestoreOptions(directory=new_dir, timeout_seconds=120)
    with pytest.raises(
        ComponentFailed, match=f"did not reach the end of the archived WAL.*{bench['gap_segment']}"
    ):
        pitr.recover(target, bench["base"], bench["store"], parse_target("latest"), options)
    assert not Path(new_dir).exists()


def _archive_history(moto, target: PitrTarget, path: Path, text: str) -> None:
    """A timeline history file, archived as a promoted server archives it: its archive_command,
    barman-cloud-wal-archive (gzipped)."""
    path.write_text(text)
    with aws_engine_env(target) as env:
        run(
            [BarmanCloud().bin("barman-cloud-wal-archive"), "--endpoint-url", moto.url, "--gzip"]
            + [target.archive_url, target.server_name, str(path)],
            env=env,
        )


def test_a_timeline_that_branched_off_ends_the_window_and_latest_is_refused(
    prefect_server, bench, moto, tmp_path
):
    """A copy of the archive into which a promoted server (a previous recovery, a failover) has
    archived its timeline history: timeline 2 left timeline 1 at T's LSN. Recovery stays on the
    base backup's timeline, so past the branch it would replay the abandoned history (the
    'after' rows): the window ends at the branch, and 'latest' from it is refused."""
    client, bucket = _s3(moto), bench["bucket"]
    for obj in client.list_objects_v2(Bucket=bucket, Prefix="pitr/pg/")["Contents"]:
        client.copy_object(
            Bucket=bucket,
            Key=obj["Key"].replace("pitr/pg/", "tl/pg/", 1),
            CopySource={"Bucket": bucket, "Key": obj["Key"]},
        )
    target = bench["target"].model_copy(update={"archive_url": f"s3://{bucket}/tl"})
    history = tmp_path / "00000002.history"
    _archive_history(moto, target, history, f'1\t{bench["T_lsn"]}\tat restore point "before-after"\n')
    engine = BarmanCloud()
    assert "00000002.history" in engine.list_wal(target)
    store, copy = _catalogued_copy(bench, moto, bucket, "tl-catalog", target)

    with pytest.raises(BadInput, match="newest history is on timeline 2") as err:
        pitr.plan(target, store, parse_target("latest"))
    assert "Nothing was changed" in str(err.value)
    (window,) = pitr.wal_archive(target, store).windows
    assert (window.timeline, window.branched_to, window.end_lsn) == (1, 2, bench["T_lsn"])
    kept = _sql(bench["svc"], "select max(pg_xact_commit_timestamp(xmin)) from t where phase = 'between-2'")
    assert window.end_time == kept[0][0]  # the last commit before the branch, not the archive's last
    with pytest.raises(BadInput, match="take a base backup on timeline 2"):
        pitr.plan(target, store, parse_target(bench["last_commit"] - timedelta(microseconds=1)))
    # 'before-after' was created past the branch, in the abandoned history: a restore point's
    # place is known only once replay meets it, so on a branched window it is refused
    with pytest.raises(BadInput, match="restore point 'before-after' cannot be placed") as err:
        pitr.plan(target, store, parse_target(target_name="before-after"))
    assert "Nothing was changed" in str(err.value)
    # before the branch both histories are one: still recoverable
    before = parse_target(window.end_time - timedelta(microseconds=1))
    assert pitr.plan(target, store, before)[2].id == copy.id
    from flows.pitr import check_wal_archive

    problems = check_wal_archive(target=target, store=store, require=False)["problems"]
    assert any("timeline 2 branched off timeline 1" in p for p in problems), problems


def test_an_archive_ending_in_a_long_stretch_without_transactions_keeps_its_window(request, moto):
    """A bulk load or an index build still running writes WAL and no commit: the window ends at
    the last transaction however many segments back it is (a fixed look-back of 8 segments found
    none, and every time target was refused as after the window)."""
    svc, target, bucket, _ = _archiving_cluster(request, moto, "pitr-long-load")
    store = _store(moto, bucket)
    _sql(svc, "create table t (id serial primary key, phase text not null)")
    with backup_session(store, "postgres-pitr") as session:
        pitr.backup(target, session)
        session.commit()
    _sql(svc, "insert into t (phase) values ('kept')")
    last_commit = _sql(svc, "select max(pg_xact_commit_timestamp(xmin)) from t")[0][0]
    password = svc.extra["password"]
    with psycopg.connect(host="127.0.0.1", port=svc.port, user="postgres", password=password) as load:
        for _ in range(9):  # nine segments of WAL from a transaction that has not committed
            load.execute("insert into t (phase) values ('loading')")
            _switch_and_wait(svc)
        report = pitr.wal_archive(target, store)
        (window,) = report.windows
        assert window.segments >= 10 and window.end_time == last_commit
        _, chosen = choose_base_backup(report, parse_target(window.start_time))  # what plan() does
        assert chosen.id == session.manifest.id
        load.rollback()


# ---- bad targets: clear errors, nothing changed ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (datetime(2026, 1, 15, 14, 30), "has no time zone"),
        ("2026-01-15T14:30:00", "has no time zone"),
        ("yesterday at noon", "is not a time"),
        ("2026-13-45T99:00:00Z", "is not a time"),
        ("2026-01-15T14+01:00", "is not a time"),  # fromisoformat: 14:00
        ("20260115T1430Z", "is not a time"),
        ("2026-W03-4T14:30:00Z", "is not a time"),  # a week date
        ("2026-01-15T14:30:00.123456789Z", "is not a time"),  # past PostgreSQL's microseconds
        (datetime.now(UTC) + timedelta(hours=1), "in the future"),
    ],
)
def test_malformed_and_naive_targets_are_refused(prefect_server, bench, new_dir, value, message):
    from flows.pitr import pitr_postgres

    with pytest.raises(BadInput, match=message):
        pitr_postgres(value, new_dir, target=bench["target"], store=bench["store"])
    assert not Path(new_dir).exists()


@pytest.mark.parametrize("value", [1733000000, 1733000000.5, 1733000000000, 0, True, "1733000000", "1.7e9"])
def test_a_number_for_a_time_is_refused_never_read_as_a_unix_time(prefect_server, new_dir, value):
    """JSON 1733000000 (the form, the API, restore options) was read by pydantic as a Unix time
    (0: no target at all, so 'latest') before the strict parser saw it: refused, saying how to
    write a time, through the flow's parameters and through RestoreOptions alike."""
    from flows.pitr import pitr_postgres
    from tasks.verbs import restore_options

    with pytest.raises(BadInput, match="is a number, not a time.*write it as text, YYYY-MM-DDTHH:MM"):
        pitr_postgres(value, new_dir)
    options = restore_options("postgres-pitr", {"directory": new_dir, "target_time": value})
    with pytest.raises(BadInput, match="is a number, not a time"):
        pitr.goal_of(options)
    with pytest.raises(BadInput, match="is a number, not a time"):
        parse_target(value)
    assert not Path(new_dir).exists()


def test_the_target_time_form_field_is_text_or_a_date_time_never_a_number():
    from prefect.utilities.callables import parameter_schema

    from flows.pitr import pitr_kubernetes, pitr_postgres

    for flow_ in (pitr_postgres, pitr_kubernetes):
        field = parameter_schema(flow_.fn).model_dump()["properties"]["target_time"]
        types = {option.get("type") for option in field.get("anyOf", [field])}
        assert types <= {"string", "null"} and "string" in types, field
        assert "time zone" in field["description"] or "timezone" in field["description"]


@pytest.mark.parametrize("lsn", ["0x0/0x3000060", "0/1_0000", "-0/3000060", "0/1FFFFFFFF", "0/ 3000060"])
def test_lsns_are_read_strictly(prefect_server, bench, new_dir, lsn):
    """int(x, 16) reads each of these as some LSN: the target would be another position."""
    from flows.pitr import pitr_postgres

    with pytest.raises(BadInput, match="is not an LSN: write it as PostgreSQL prints it"):
        pitr_postgres(None, new_dir, target_lsn=lsn, target=bench["target"], store=bench["store"])
    assert not Path(new_dir).exists()


def test_target_after_the_window_is_refused_with_the_window(prefect_server, bench, new_dir):
    from flows.pitr import pitr_postgres

    late = bench["last_commit"] + timedelta(microseconds=1)
    with pytest.raises(BadInput, match="after the last archived transaction") as err:
        pitr_postgres(late, new_dir, target=bench["target"], store=bench["store"])
    assert bench["base"].source_time.isoformat() in str(err.value)
    assert bench["last_commit"].isoformat() in str(err.value)
    assert not Path(new_dir).exists()


def test_target_before_the_base_backup_is_refused(prefect_server, bench, new_dir):
    from flows.pitr import pitr_postgres

    early = bench["base"].source_time - timedelta(seconds=1)
    with pytest.raises(BadInput, match="outside the recoverable window") as err:
        pitr_postgres(early, new_dir, target=bench["target"], store=bench["store"])
    assert bench["base"].source_time.isoformat() in str(err.value)
    # an explicitly chosen base backup: a target before its end is refused, never silently ignored
    with pytest.raises(BadInput, match="before the end of base backup"):
        pitr.plan(bench["target"], bench["store"], parse_target(early), backup_id=bench["base"].id)
    assert not Path(new_dir).exists()


def test_lsn_targets_the_archive_cannot_reach_are_refused_before_anything(prefect_server, bench, new_dir):
    """recovery_target_lsn stops after the first record at or past it: past the last archived
    transaction (the end of the last segment, a switch's padding, far beyond) no record is, and
    the server ended with 'recovery ended before configured recovery target' after the new
    instance was made. Before the base backup's end the target is before consistency. Each is
    refused by the plan, stating what is reachable."""
    from flows.pitr import pitr_postgres

    (window,) = pitr.wal_archive(bench["target"], bench["store"]).windows
    last = pitr.parse_lsn(window.last_xact_lsn)
    start = pitr.parse_lsn(window.start_lsn)
    beyond = [window.end_lsn, pitr.format_lsn(last + 1), "FFFFFFFF/FFFFFFFF"]
    for lsn in [*beyond, pitr.format_lsn(start - 1)]:
        with pytest.raises(BadInput, match="outside the recoverable window") as err:
            pitr.plan(bench["target"], bench["store"], parse_target(target_lsn=lsn))
        assert window.start_lsn in str(err.value) and window.last_xact_lsn in str(err.value), lsn
        assert "Nothing was changed" in str(err.value)
    with pytest.raises(BadInput, match="outside the recoverable window"):
        pitr_postgres(None, new_dir, target_lsn=window.end_lsn, target=bench["target"], store=bench["store"])
    assert not Path(new_dir).exists()


def test_the_last_archived_transaction_is_a_reachable_lsn_target(bench, new_dir):
    """The window's LSN end is inclusive: recovery stops right after that commit ('after' rows)."""
    (window,) = pitr.wal_archive(bench["target"], bench["store"]).windows
    options = pitr.RestoreOptions(directory=new_dir, target_lsn=window.last_xact_lsn, timeout_seconds=120)
    result = pitr.restore(bench["target"], bench["base"], bench["store"], options)
    assert result["in_recovery"] and "recovery stopping after" in result["stopped_at"]
    assert _phases(result["port"], bench["svc"].extra["password"])["after"] == 5


@pytest.mark.parametrize(("shift", "between_2"), [(timedelta(microseconds=-1), 0), (timedelta(0), 5)])
def test_a_time_target_lands_exactly_on_it(bench, new_dir, shift, between_2):
    """To the microsecond: 'between-1' committed before T is there; 'between-2', committed 1 us
    after T, is not; a commit exactly at T is (recovery_target_inclusive)."""
    committed = _sql(
        bench["svc"], "select max(pg_xact_commit_timestamp(xmin)) from t where phase = 'between-2'"
    )[0][0]
    goal = RecoveryTarget(kind="time", time=committed + shift)
    options = pitr.RestoreOptions(directory=new_dir, timeout_seconds=120)
    result = pitr.recover(bench["target"], bench["base"], bench["store"], goal, options)
    phases = _phases(result["port"], bench["svc"].extra["password"])
    assert (phases["between-1"], phases.get("between-2", 0), phases.get("after", 0)) == (5, between_2, 0)
    assert datetime.fromisoformat(result["recovered_to_time"]) <= goal.time


def test_backup_id_latest_is_the_flows_choice_and_another_components_id_is_refused(bench):
    """The form offers backup_id='latest' ('the newest verified backup'): PITR refused it as
    'base backup latest is not in a recoverable window'. A postgres backup's id was looked for
    in the WAL archive's windows before saying what was wrong with it."""
    chosen = pitr.plan(bench["target"], bench["store"], parse_target("latest"))[2]
    assert pitr.plan(bench["target"], bench["store"], parse_target("latest"), backup_id="latest")[2] == chosen
    with pytest.raises(BadInput, match="is a postgres backup: PITR starts from a postgres-pitr base backup"):
        pitr.plan(
            bench["target"],
            bench["store"],
            parse_target("latest"),
            backup_id="postgres-20260101T000000Z-abcdef",
        )


def test_recovery_that_ends_before_its_target_is_detected(bench, new_dir):
    """Bypass the window check: the server gives up ('recovery ended before configured recovery
    target was reached') even though pg_ctl -w start may return 0. The flow must fail."""
    goal = RecoveryTarget(kind="time", time=bench["last_commit"] + timedelta(seconds=1))
    options = pitr.RestoreOptions(directory=new_dir, timeout_seconds=120)
    with pytest.raises(ComponentFailed, match="recovery ended before configured recovery target"):
        pitr.recover(bench["target"], bench["base"], bench["store"], goal, options)
    assert not Path(new_dir).exists()  # the half-recovered instance is gone


# ---- the real thing ----------------------------------------------------------------------------


def test_pitr_to_a_time_brings_back_exactly_the_rows_before_it(prefect_server, bench, new_dir):
    from flows.pitr import pitr_postgres, promote_pitr

    svc, password = bench["svc"], bench["svc"].extra["password"]
    source_started = _sql(svc, "select pg_postmaster_start_time()")[0][0]
    wal_before = BarmanCloud().list_wal(bench["target"])

    result = pitr_postgres(bench["T"], new_dir, target=bench["target"], store=bench["store"])

    assert result["base_backup"] == bench["base"].id
    assert result["port"] != svc.port
    assert result["in_recovery"] and result["paused_for_promotion"]
    assert list(result["seconds"]) == ["fetch+untar", "verify", "prepare", "start+replay"]  # the RTO
    assert datetime.fromisoformat(result["recovered_to_time"]) <= bench["T"]
    assert "recovery stopping before commit" in result["stopped_at"]
    assert _phases(result["port"], password) == {"before": 5, "between-1": 5, "between-2": 5}
    with psycopg.connect(host="127.0.0.1", port=result["port"], user="postgres", password=password) as conn:
        assert conn.execute("show archive_mode").fetchone()[0] == "off"
        # its log says what we read in English, whatever the source's lc_messages ('C.UTF-8' here)
        assert conn.execute("show lc_messages").fetchone()[0] == "C"
        # sized for the recovery pod (RestoreOptions.shared_buffers), not the source's 144MB
        assert conn.execute("show shared_buffers").fetchone()[0] == "128MB"
    # the source kept running, untouched, with all its rows
    assert _sql(svc, "select pg_postmaster_start_time()")[0][0] == source_started
    assert dict(_sql(svc, "select phase, count(*) from t group by phase"))["after"] == 5

    promoted = promote_pitr(new_dir, target=bench["target"])
    assert promoted["promoted"] and promoted["timeline"] == 2
    with psycopg.connect(
        host="127.0.0.1", port=result["port"], user="postgres", password=password, autocommit=True
    ) as conn:
        conn.execute("insert into t (phase) values ('written after promotion')")
    # archiving was off: the promoted instance wrote nothing into the production archive
    assert BarmanCloud().list_wal(bench["target"]) == wal_before
    assert not (Path(new_dir) / "aws-credentials").exists()


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def test_pitr_to_latest_and_to_an_lsn(bench, new_dir, tmp_path, monkeypatch):
    """'latest' promotes itself: its archive key is deleted then (no promote_pitr follows), and
    the server (and its restore_command) never had the flow's secrets in its environment."""
    ours = {
        name: f"{name}-{secrets.token_hex(8)}" for name in ("PGPASSWORD", "KLB_X_TOKEN", "AWS_SESSION_TOKEN")
    }
    for name, value in ours.items():
        monkeypatch.setenv(name, value)
    key = "aws-" + secrets.token_hex(16)  # moto accepts any key pair
    target = bench["target"].model_copy(update={"aws_secret_access_key": SecretStr(key)})
    latest_dir = new_dir
    options = pitr.RestoreOptions(directory=latest_dir)
    result = pitr.restore(target, bench["base"], bench["store"], options)
    assert not result["in_recovery"]
    pid = int(Path(latest_dir, "data", "postmaster.pid").read_text().split()[0])
    server_env = _environ(pid)
    assert not [n for n, v in ours.items() if v.encode() in server_env]
    assert key.encode() not in server_env and b"AWS_SECRET_ACCESS_KEY" not in server_env
    assert not (Path(latest_dir) / "aws-credentials").exists()
    on_disk = [p for p in Path(latest_dir).rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not on_disk
    assert _phases(result["port"], bench["svc"].extra["password"]) == {
        "before": 5,
        "between-1": 5,
        "between-2": 5,
        "after": 5,
    }
    pitr.stop_instance(latest_dir)
    lsn_dir = latest_dir + "-lsn"
    try:
        result = pitr.restore(
            bench["target"],
            bench["base"],
            bench["store"],
            pitr.RestoreOptions(directory=lsn_dir, target_lsn=bench["T_lsn"]),
        )
        assert result["in_recovery"]
        assert _phases(result["port"], bench["svc"].extra["password"]) == {
            "before": 5,
            "between-1": 5,
            "between-2": 5,
        }
    finally:
        if Path(lsn_dir, pitr.STATE_FILE).exists():
            pitr.stop_instance(lsn_dir)
        shutil.rmtree(lsn_dir, ignore_errors=True)


def test_drill_recovers_verifies_and_removes_its_instance(bench, monkeypatch):
    base = services.session_dir("pitr-drills")
    monkeypatch.setenv("KLB_PITR_DIR", str(base))
    report = pitr.drill(bench["target"], bench["base"], bench["store"], "d1")
    assert report["verified"] and report["checks"]["in_recovery"] is False
    assert "postgres" in report["checks"]["databases"]
    # where its RTO went, phase by phase
    assert list(report["checks"]["seconds"]) == [
        "plan", "fetch+untar", "verify", "prepare", "start+replay", "stop+remove"
    ]  # fmt: skip
    assert not (base / "drill-d1").exists()
    assert _sql(bench["svc"], "select count(*) from t")[0][0] == 20  # source untouched


def test_the_drill_flow_picks_the_newest_pitr_backup_and_passes(prefect_server, bench):
    """restore_drill resolves 'latest' for postgres-pitr with no restore options: PITR's
    RestoreOptions require `directory`, and validating them to pick the backup failed every
    drill of postgres-pitr (the demo's 7th component) with BadInput."""
    from flows.drill import drill_report_markdown, drill_report_text, restore_drill

    record = restore_drill(
        components=["postgres-pitr"], targets={"postgres-pitr": bench["target"]}, store=bench["store"]
    )
    assert record.passed and [c.status.value for c in record.components] == ["verified"]
    # the report says where the RTO went, with PITR's own phases inside the restore step
    text = drill_report_text(record)
    assert re.search(
        r"postgres-pitr: restore [\d.]+ s \(plan [\d.]+ s, fetch\+untar [\d.]+ s, verify [\d.]+ s, "
        r"prepare [\d.]+ s, start\+replay [\d.]+ s, stop\+remove [\d.]+ s\)",
        text,
    )
    markdown = drill_report_markdown(record)
    assert "where the RTO went: restore" in markdown and "seconds: ok" not in markdown


def test_pitr_to_a_named_restore_point(bench, new_dir, monkeypatch):
    # and the port it was given is taken before it binds it: started again on another one
    recover = importlib.import_module(
        "tasks.components.postgres_pitr.recover"
    )  # the package's recover() hides it

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        ports = iter([busy])
        monkeypatch.setattr(recover, "free_port", lambda: next(ports, None) or free_port())
        options = pitr.RestoreOptions(directory=new_dir, target_name="before-after")
        result = pitr.restore(bench["target"], bench["base"], bench["store"], options)
    assert result["port"] != busy
    assert json.loads(Path(new_dir, pitr.STATE_FILE).read_text())["port"] == result["port"]
    assert "restore point" in result["stopped_at"] and result["in_recovery"]
    assert _phases(result["port"], bench["svc"].extra["password"]) == {
        "before": 5,
        "between-1": 5,
        "between-2": 5,
    }


def test_promote_refuses_an_instance_that_is_not_running_and_never_promotes_another(bench, new_dir):
    """A PITR instance that died leaves its directory (and maybe a stale postmaster.pid); free ports
    are reused, so another recovering server may answer on its port. promote() of the dead one
    must refuse, not promote that other server and report success."""
    options = pitr.RestoreOptions(directory=new_dir, target_lsn=bench["T_lsn"])
    alive = pitr.restore(bench["target"], bench["base"], bench["store"], options)
    assert alive["in_recovery"]
    dead = Path(new_dir + "-dead")
    try:
        (dead / "data").mkdir(parents=True)
        shutil.copy(Path(new_dir, pitr.STATE_FILE), dead / pitr.STATE_FILE)  # same port
        with pytest.raises(ComponentFailed, match="is not running before promotion"):
            pitr.promote(bench["target"], str(dead))
        lines = Path(new_dir, "data", "postmaster.pid").read_text().splitlines()
        exited = subprocess.Popen(["true"])
        exited.wait()  # its pid names no process now
        gone = str(exited.pid)
        (dead / "data" / "postmaster.pid").write_text(
            "\n".join([gone, str(dead / "data"), *lines[2:]]) + "\n"
        )
        with pytest.raises(ComponentFailed, match="is not running before promotion"):
            pitr.promote(bench["target"], str(dead))
        # a live postmaster.pid that names the port, but the port is another data directory's
        (dead / "data" / "postmaster.pid").write_text("\n".join([str(os.getpid()), *lines[1:]]) + "\n")
        with pytest.raises(ComponentFailed, match=f"served by .*{Path(new_dir).name}/data, not by"):
            pitr.promote(bench["target"], str(dead))
        with psycopg.connect(
            host="127.0.0.1", port=alive["port"], user="postgres", password=bench["svc"].extra["password"]
        ) as conn:
            assert conn.execute("select pg_is_in_recovery()").fetchone()[0]  # still paused
        assert Path(new_dir, "aws-credentials").exists()
    finally:
        shutil.rmtree(dead, ignore_errors=True)


def _with_source_settings(data: bytes, lines: str) -> bytes:
    """The base tar with `lines` appended to its postgresql.auto.conf: what a source that was
    itself recovered (a cut-over PITR instance keeps its recovery settings), a standby, or one
    with its own archive_command carries into every base backup of it."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(data)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for m in src.getmembers():
            body = src.extractfile(m).read() if m.isfile() else None
            if m.name == "postgresql.auto.conf":
                body += lines.encode()
                m.size = len(body)
            dst.addfile(m, io.BytesIO(body) if body is not None else None)
    return out.getvalue()


@pytest.mark.parametrize("goal_kind", ["latest", "time"])
def test_recovery_settings_a_base_backup_carries_from_its_source_never_apply(
    bench, base_tar, local_store, new_dir, tmp_path, goal_kind
):
    """The source's recovery target, its action, its end command, its archive_command and
    synchronous standbys: none decides where the recovery goes or what the new instance runs."""
    ran = tmp_path / "ran"
    ran.mkdir(mode=0o777)
    source = (
        f"recovery_target_lsn = '{bench['T_lsn']}'\n"  # another target, where the source stopped
        "recovery_target_action = 'shutdown'\n"
        "recovery_target_inclusive = off\n"
        f"recovery_end_command = 'touch {ran}/recovery_end_command'\n"
        f"archive_command = 'touch {ran}/archive_command'\n"
        "synchronous_standby_names = '*'\n"
        "restore_command = 'false'\n"
        f"primary_conninfo = 'host=127.0.0.1 port={bench['svc'].port}'\n"
    )
    store = local_store(compression="none")
    # pg_verifybackup would (rightly) see the changed file: the test is about what it holds
    carried = _stored_base(store, bench, _with_source_settings(base_tar, source), pg_manifest=False)
    goal = (
        RecoveryTarget(kind="latest")
        if goal_kind == "latest"
        else RecoveryTarget(kind="time", time=bench["T"])
    )
    result = pitr.recover(bench["target"], carried, store, goal, pitr.RestoreOptions(directory=new_dir))
    password = bench["svc"].extra["password"]
    want = {"before": 5, "between-1": 5, "between-2": 5} | ({"after": 5} if goal_kind == "latest" else {})
    assert _phases(result["port"], password) == want
    with psycopg.connect(host="127.0.0.1", port=result["port"], user="postgres", password=password) as conn:
        applied = dict(conn.execute("select name, setting from pg_file_settings where applied").fetchall())
        assert conn.execute("show synchronous_standby_names").fetchone()[0] == ""
    assert applied["archive_command"] == applied["recovery_end_command"] == applied["primary_conninfo"] == ""
    assert applied["recovery_target_action"] == "pause" and applied["recovery_target_inclusive"] == "on"
    assert not list(ran.iterdir())  # none of the source's commands ran


def _with_source_files(data: bytes, append: dict[str, str], drop: tuple[str, ...] = ()) -> bytes:
    """The base tar with lines appended to some of its files (a file not in it is added), some
    left out (a Debian source keeps postgresql.conf, pg_hba.conf and pg_ident.conf in /etc)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(data)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for m in src.getmembers():
            if m.name in drop:
                continue
            body = src.extractfile(m).read() if m.isfile() else None
            if m.name in append:
                body += append[m.name].encode()
                m.size = len(body)
            dst.addfile(m, io.BytesIO(body) if body is not None else None)
        for name in sorted(set(append) - (set(src.getnames()) - set(drop))):
            added = tarfile.TarInfo(name)
            added.size, added.mode = len(append[name].encode()), 0o600
            dst.addfile(added, io.BytesIO(append[name].encode()))
    return out.getvalue()


# what a production host's configuration names: its own files, directories, group and libraries,
# none of which exists on the host a drill or a DR restore runs on
_SOURCE_HOST_CONF = """
ssl = on
ssl_cert_file = '/srv/source-host/tls/server.crt'
ssl_key_file = '/srv/source-host/tls/server.key'
ssl_ca_file = '/srv/source-host/tls/ca.crt'
ssl_crl_file = '/srv/source-host/tls/crl.pem'
hba_file = '/srv/source-host/etc/pg_hba.conf'
ident_file = '/srv/source-host/etc/pg_ident.conf'
include_dir = '/srv/source-host/etc/conf.d'
include '/srv/source-host/etc/tuning.conf'
INCLUDE_IF_EXISTS = '../outside-the-data-directory.conf'
include 'kept.conf'
shared_preload_libraries = 'pg_stat_statements, "pg_not_installed_here"'
session_preload_libraries = 'missing_session_lib'
data_directory = '/srv/source-host/data'
config_file = '/srv/source-host/etc/postgresql.conf'
external_pid_file = '/srv/source-host/run/postgresql.pid'
unix_socket_group = 'source-only-group'
unix_socket_permissions = 0770
logging_collector = on
log_directory = '/srv/source-host/log'
listen_addresses = '10.255.0.5'
port = 6543
lc_monetary = 'xx_NOT_HERE.UTF-8'
lc_time = 'xx_NOT_HERE.UTF-8'
timezone = 'Not/Here'
"""


@pytest.mark.parametrize("layout", ["in-data-directory", "debian"])
def test_a_source_hosts_files_libraries_and_addresses_never_stop_the_recovery(
    bench, base_tar, local_store, new_dir, layout
):
    """A base backup carries its source's configuration: TLS files, hba/ident files, includes,
    preload libraries, its data directory, socket group, log directory and address, all of the
    source host; a hostssl-only pg_hba.conf and a block whose sslmode is 'require'. The recovery
    starts and is reached anyway, on its own address, with exactly the target's data (and the
    source's pg_hba.conf as backed up); what it left out (a library not installed here, an include
    of the source's file) is reported."""
    kept = {"kept.conf": "work_mem = '7MB'\n"}  # an include inside the data directory applies
    if layout == "debian":  # postgresql.conf, pg_hba.conf, pg_ident.conf in /etc of the source
        drop = ("postgresql.conf", "pg_hba.conf", "pg_ident.conf")
        tar = _with_source_files(base_tar, {"postgresql.auto.conf": _SOURCE_HOST_CONF, **kept}, drop)
    else:  # and TLS-only client authentication, which a loopback instance without TLS never matches
        hba = {"pg_hba.conf": "hostssl all all 0.0.0.0/0 scram-sha-256\nlocal all all peer\n"}
        tar = _with_source_files(
            base_tar, {"postgresql.conf": _SOURCE_HOST_CONF, **kept, **hba}, drop=tuple(hba)
        )
    store = local_store(compression="none")
    carried = _stored_base(store, bench, tar, pg_manifest=False)
    goal = RecoveryTarget(kind="time", time=bench["T"])
    tls = bench["target"].model_copy(update={"sslmode": "require"})  # production's connection
    options = pitr.RestoreOptions(directory=new_dir, timeout_seconds=120)
    result = pitr.recover(tls, carried, store, goal, options)
    with tarfile.open(fileobj=io.BytesIO(tar)) as backed_up:  # the data directory's, as backed up
        names = backed_up.getnames()
        for name in ("pg_hba.conf", "pg_ident.conf"):
            there = Path(new_dir, "data", name)
            if name in names:
                assert there.read_bytes() == backed_up.extractfile(name).read()
            else:
                assert not there.exists()
    password = bench["svc"].extra["password"]
    assert _phases(result["port"], password) == {"before": 5, "between-1": 5, "between-2": 5}
    with psycopg.connect(host="127.0.0.1", port=result["port"], user="postgres", password=password) as conn:
        show = {
            name: conn.execute(f"show {name}").fetchone()[0]
            for name in ("ssl", "hba_file", "ident_file", "data_directory", "listen_addresses")
            + ("shared_preload_libraries", "session_preload_libraries", "unix_socket_group")
            + ("external_pid_file", "logging_collector", "work_mem", "lc_monetary", "timezone")
        }
    data = str(Path(new_dir, "data"))
    assert show == {
        "ssl": "off",
        "hba_file": f"{new_dir}/pg_hba.conf",  # the recovery's own: loopback, password
        "ident_file": f"{new_dir}/pg_ident.conf",
        "data_directory": data,
        "listen_addresses": "127.0.0.1",
        "shared_preload_libraries": "pg_stat_statements",  # installed here: kept
        "session_preload_libraries": "",
        "unix_socket_group": "",
        "external_pid_file": "",
        "logging_collector": "off",
        "work_mem": "7MB",
        "lc_monetary": "C",
        "timezone": "UTC",
    }
    warnings = "\n".join(result["warnings"])
    assert "pg_not_installed_here" in warnings and "missing_session_lib" in warnings
    assert "install it" in warnings
    assert "/srv/source-host/etc/conf.d" in warnings and "/srv/source-host/etc/tuning.conf" in warnings
    assert "outside-the-data-directory.conf" in warnings
    assert "pg_stat_statements" not in warnings
    for name in ("lc_monetary", "lc_time", "timezone"):
        assert f"{name} = '" in warnings, name


def test_a_restore_point_not_in_the_archive_is_not_found(bench, new_dir):
    """A name no pg_create_restore_point made (a typo, another server's): NotFound naming it, not
    a recovery reported done, and nothing left behind."""
    options = pitr.RestoreOptions(directory=new_dir, target_name="before-aftr")
    with pytest.raises(NotFound, match="restore point 'before-aftr' is not in the archived WAL"):
        pitr.restore(bench["target"], bench["base"], bench["store"], options)
    assert not Path(new_dir).exists()


def test_restore_refuses_a_directory_that_is_not_new(bench, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(BadInput, match="not empty"):
        pitr.restore(
            bench["target"], bench["base"], bench["store"], pitr.RestoreOptions(directory=str(tmp_path))
        )
    assert (tmp_path / "keep.txt").read_text() == "precious"


# ---- verification: what a base backup must hold to count ---------------------------------------


@pytest.fixture(scope="module")
def base_tar(bench) -> bytes:
    """The bench's base backup as pg_basebackup wrote it (raw tar)."""
    return b"".join(read_object(bench["store"], bench["base"].object(pitr.BASE_OBJECT)))


def _stored_base(store, bench, data: bytes, **engine) -> Manifest:
    """`data` catalogued as a base backup with the bench's facts (checksummed as it now is:
    what a pg_basebackup that wrote a broken tar and exited 0, or a re-sealed forgery, leaves)."""
    with backup_session(store, "postgres-pitr") as s:
        s.write(pitr.BASE_OBJECT, [data[i : i + (4 << 20)] for i in range(0, len(data), 4 << 20)])
        s.engine.update({**bench["base"].engine, **engine})
        s.source_time = bench["base"].source_time
        return s.commit()


def _retar(data: bytes, keep) -> bytes:
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(data)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for m in src.getmembers():
            if keep(m.name):
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    return out.getvalue()


def _middle_member(data: bytes) -> int:
    """Where the header of the tar's middle member starts."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    return members[len(members) // 2].offset


def _cut_at_a_member(data: bytes) -> bytes:
    """A tar cut where a member's header starts: what is left reads as a valid, shorter tar."""
    return data[: _middle_member(data)]


def _flip_a_header(data: bytes) -> bytes:
    at = _middle_member(data)
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def test_a_sound_base_backup_verifies_with_its_wal_and_archive(bench):
    report = pitr.verify(bench["target"], bench["base"], bench["store"])
    e = bench["base"].engine
    assert report["archive"] == "archived" and report["wal_in_tar"][0] == e["first_segment"]
    assert report["manifest_files"] > 100 and report["tar_members"] > report["manifest_files"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_cut_at_a_member, "without its end-of-archive block"),
        (_flip_a_header, "wrong checksum"),
        (lambda d: _retar(d, lambda n: n != "backup_label"), "holds no backup_label"),
        (lambda d: _retar(d, lambda n: n != "global/pg_control"), "global/pg_control"),
        (lambda d: _retar(d, lambda n: not n.startswith("pg_wal/0")), "the WAL it needs"),
    ],
    ids=["cut-at-a-member", "header-bit-flip", "no-backup-label", "a-file-missing", "no-wal"],
)
def test_a_base_backup_no_recovery_can_start_from_fails_verification(
    bench, base_tar, local_store, damage, message
):
    """Stored whole (its sha256 matches), but not a base backup: IntegrityError, recorded as damage."""
    store = local_store(compression="none")
    broken = _stored_base(store, bench, damage(base_tar))
    with pytest.raises(
        IntegrityError, match=f"base backup {broken.id} cannot be recovered: .*{message}"
    ) as err:
        verify_component_backup(broken, store, bench["target"])
    assert is_damage(err.value)
    assert broken.id in damaged_ids(store, "postgres-pitr")  # by any reader, not only the sweep


def test_a_base_backup_whose_wal_the_archive_lost_fails_verification(bench, base_tar, moto, local_store):
    """The archive lost the segment where the base backup ends while later WAL is archived: no
    recovery can replay on from it. Before its segment is archived at all, it is pending, not damage."""
    client, bucket = _s3(moto), bench["bucket"]
    stop = segment_name(1, pitr.parse_lsn(bench["base"].engine["stop_lsn"]) // (16 << 20), 16 << 20)
    for obj in client.list_objects_v2(Bucket=bucket, Prefix="pitr/pg/")["Contents"]:
        if stop not in obj["Key"]:
            client.copy_object(
                Bucket=bucket,
                Key=obj["Key"].replace("pitr/pg/", "lost/pg/", 1),
                CopySource={"Bucket": bucket, "Key": obj["Key"]},
            )
    target = bench["target"].model_copy(update={"archive_url": f"s3://{bucket}/lost"})
    store = local_store(compression="none")
    lost = _stored_base(store, bench, base_tar, archive_url=target.archive_url)
    with pytest.raises(IntegrityError, match=f"lacks segment {stop}, where it ends, though later WAL") as err:
        pitr.verify(target, lost, store)
    assert is_damage(err.value)
    empty = bench["target"].model_copy(update={"archive_url": f"s3://{bucket}/nothing-yet"})
    pending = _stored_base(store, bench, base_tar, archive_url=empty.archive_url)
    assert pitr.verify(empty, pending, store)["archive"] == "pending"
    # another server's base backup (a store shared by several): the sweep's one target cannot judge it
    assert pitr.verify(bench["target"], lost, store)["archive"].startswith("not checked: taken for")


def test_a_base_backup_found_damaged_is_never_picked_by_the_window(
    prefect_server, bench, base_tar, local_store
):
    """The sweep records the damage; the window starts at the sound one, 'latest' and every target
    recover from it, and naming the damaged one is refused, saying why."""
    from flows.maintenance import verify_backups

    store = local_store(compression="none")
    sound = _stored_base(store, bench, base_tar)
    damaged = _stored_base(store, bench, _retar(base_tar, lambda n: n != "backup_label"))
    state = verify_backups(components=["postgres-pitr"], store=store, newest=2, return_state=True)
    assert state.is_failed() and f"primary:{damaged.id}" in state.message
    assert f"primary:{sound.id}" not in state.message
    (window,) = pitr.wal_archive(bench["target"], store).windows
    assert [b.id for b in window.base_backups] == [sound.id]
    assert pitr.plan(bench["target"], store, parse_target("latest"))[2].id == sound.id
    with pytest.raises(IntegrityError, match=f"base backup {damaged.id} is recorded damaged"):
        pitr.plan(bench["target"], store, parse_target("latest"), backup_id=damaged.id)


# ---- flows: the scheduled base backup and the archive check (last: they add a base backup) -----


def _artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return max(found, key=lambda a: a.created).data


def test_backup_and_check_flows(prefect_server, bench):
    from flows.backup import backup_component
    from flows.pitr import check_wal_archive

    result = backup_component("postgres-pitr", target=bench["target"], store=bench["store"])
    assert result.verified and result.component == "postgres-pitr"
    _switch_and_wait(bench["svc"])
    report = check_wal_archive(target=bench["target"], store=bench["store"])
    assert report["problems"] == []
    (window,) = report["archive"]["windows"]
    assert [b["id"] for b in window["base_backups"]] == [bench["base"].id, result.id]
    markdown = _artifact("pitr-wal-archive")
    assert "PITR possible" in markdown and bench["base"].id in markdown and result.id in markdown
    assert "testing" not in markdown  # no credentials in the report


def test_check_flow_fails_when_archiving_is_off(prefect_server, postgres, moto):
    from flows.pitr import check_wal_archive

    services.wait_until(lambda: _sql(postgres, "select 1"), 30, "session PostgreSQL")
    target = PitrTarget(port=postgres.port, password=postgres.extra["password"], archive_url="s3://nowhere/x")
    bucket = "pitr-chk-" + secrets.token_hex(4)
    s3.make_bucket(moto.url, bucket)
    target = target.model_copy(update={"archive_url": f"s3://{bucket}/pitr", "endpoint_url": moto.url})
    target = target.model_copy(
        update={"aws_access_key_id": SecretStr("testing"), "aws_secret_access_key": SecretStr("testing")}
    )
    with pytest.raises(ConfigurationError, match="PITR not possible: archive_mode is off"):
        check_wal_archive(target=target, store=_store(moto, bucket))
    assert "**PITR not possible**" in _artifact("pitr-wal-archive")


def test_recovery_replays_wal_fetched_ahead_not_one_process_per_segment(bench, new_dir):
    """Every segment from the base backup to the target comes out of the prefetch spool (one
    long-lived fetcher); barman-cloud-wal-restore runs only for what the spool cannot have."""
    goal = RecoveryTarget(kind="time", time=bench["T"])
    result = pitr.recover(
        bench["target"], bench["base"], bench["store"], goal, pitr.RestoreOptions(directory=new_dir)
    )
    first = bench["base"].engine["first_segment"]
    replayed = sorted(
        n
        for n in BarmanCloud().list_wal(bench["target"])
        if len(n) == 24 and n[:8] == first[:8] and n >= first
    )
    restored = result["wal_restored"]
    spooled = restored["from_spool"]
    # the replayed segments, in order from the base backup's first, all came out of the spool
    assert len(spooled) >= 2 and spooled == replayed[: len(spooled)]
    # what else the server asked for (timeline history files) the running fetcher answered:
    # not one barman-cloud-wal-restore process was started
    assert restored["fallback"] == [] and restored["not_archived"], restored
    assert _phases(result["port"], bench["svc"].extra["password"]) == {
        "before": 5,
        "between-1": 5,
        "between-2": 5,
    }
    assert not (Path(new_dir) / "wal-spool").exists()  # the spool is gone once recovery paused


def _ask(command: str, name: str, dest: Path) -> None:
    """Run the restore_command as the server would for `name` (a hang guard: it waits at most
    WAIT_STEPS x 0.05 s = 300 s for a segment it believes is coming)."""
    argv = shlex.split(command.replace("%f", name).replace("%p", str(dest)))
    subprocess.run(argv, check=True, timeout=60, capture_output=True)  # noqa: S603
    assert dest.stat().st_size > 0


def _fetcher_pid(spool: Path) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
                continue
            if str(spool).encode() in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError("no fetcher process")


def test_the_spool_neither_waits_again_for_a_segment_handed_over_nor_for_a_dead_fetcher(
    bench, tmp_path, monkeypatch
):
    """The server asks for some segments again after the spool handed them over: the running
    fetcher brings it again, on request. A fetcher can die (killed, out of memory) before it
    marks the spool done: that is not waited for (300 s each), the restore_command falls back to
    barman-cloud-wal-restore at once."""
    monkeypatch.setattr(prefetch, "AHEAD", 1)  # the fetcher stays busy (alive) until plan[1] is taken
    root = tmp_path / "pitr"
    root.mkdir()
    creds = write_credentials_file(bench["target"], root / "aws-credentials", None)
    engine, first = BarmanCloud(), bench["base"].engine["first_segment"]
    with prefetch.wal_spool(engine, bench["target"], root, creds, first, None) as command:
        spool = root / "wal-spool"
        plan = (spool / prefetch.PLAN).read_text().split()
        assert len(plan) >= 3 and plan[0] == first
        services.wait_until(lambda: (spool / plan[0]).exists(), 30, "the first segment spooled")
        _ask(command, plan[0], tmp_path / "a")
        _ask(command, plan[0], tmp_path / "again")  # asked again: fetched again, not waited for
        assert (tmp_path / "again").read_bytes() == (tmp_path / "a").read_bytes()
        assert not (spool / prefetch.DONE).exists()  # the fetcher is still at work

        os.kill(_fetcher_pid(spool), signal.SIGKILL)  # holding plan[1]; plan[2] never comes
        services.wait_until(lambda: (spool / prefetch.DONE).exists(), 15, "the spool marked done")
        _ask(command, plan[2], tmp_path / "b")
    log = (root / prefetch.RESTORE_LOG).read_text().split("\n")
    assert log[:3] == [f"spool {plan[0]}", f"fetcher {plan[0]}", f"fallback {plan[2]}"]
    assert not spool.exists()


def test_the_fetcher_answers_what_is_not_planned_and_says_what_the_archive_does_not_hold(bench, tmp_path):
    """Beyond its plan the server asks for timeline history files, for the segment after the
    archive's end (how 'latest' finds it) and for segments again: the running fetcher answers
    each, with the file or 'not archived' (the restore_command exits non-zero, as
    barman-cloud-wal-restore does for a missing file), starting no process. What is no WAL file
    name is never asked of the fetcher."""
    root = tmp_path / "pitr"
    root.mkdir()
    creds = write_credentials_file(bench["target"], root / "aws-credentials", None)
    first = bench["base"].engine["first_segment"]
    beyond = "0000000100000009000000FF"  # far past the archive's end
    with prefetch.wal_spool(BarmanCloud(), bench["target"], root, creds, first, None) as command:
        spool = root / "wal-spool"
        plan = (spool / prefetch.PLAN).read_text().split()
        for name in (beyond, "00000009.history", beyond):  # asked twice: answered twice
            argv = shlex.split(command.replace("%f", name).replace("%p", str(tmp_path / "x")))
            out = subprocess.run(argv, timeout=60, capture_output=True)  # noqa: S603
            assert out.returncode != 0 and not (tmp_path / "x").exists()
        _ask(command, plan[0], tmp_path / "first")
        _ask(command, plan[0], tmp_path / "first-again")
        assert (tmp_path / "first-again").read_bytes() == (tmp_path / "first").read_bytes()
        odd = subprocess.run(  # noqa: S603
            shlex.split(command.replace("%f", "../x").replace("%p", str(tmp_path / "y"))),
            timeout=60,
            capture_output=True,
        )
        assert odd.returncode != 0
    assert prefetch.restore_report(root) == {
        "from_spool": [plan[0]],
        "from_fetcher": [plan[0]],
        "not_archived": [beyond, "00000009.history", beyond],
        "fallback": ["../x"],
    }
    assert not list(root.glob("x*"))  # nothing written beside the spool for the odd name


def test_the_fetcher_runs_as_the_servers_user_so_a_link_planted_in_its_spool_leads_nowhere(
    bench, new_dir, tmp_path, monkeypatch
):
    """Run as root for a server of another OS user, the fetcher writes into the spool, which that
    user can write to: as root, a link planted there (`.<segment>.part` -> a root-only file) had
    the download written through it. It runs as the server's user, which the link gets nowhere."""
    assert os.geteuid() == 0, "the suite runs as root (scripts/setup.sh installs packages)"
    monkeypatch.setattr(prefetch, "AHEAD", 1)  # plan[1] is fetched only once plan[0] is taken
    user = "postgres"
    root = Path(new_dir)
    root.mkdir(parents=True)
    shutil.chown(root, user)
    creds = write_credentials_file(bench["target"], root / "aws-credentials", user)
    victim = tmp_path / "root-only"
    victim.write_text("untouched")
    first = bench["base"].engine["first_segment"]
    with prefetch.wal_spool(BarmanCloud(), bench["target"], root, creds, first, user) as command:
        spool = root / "wal-spool"
        plan = (spool / prefetch.PLAN).read_text().split()
        assert len(plan) >= 2
        services.wait_until(lambda: (spool / plan[0]).exists(), 30, "the first segment spooled")
        (spool / f".{plan[1]}.part").symlink_to(victim)
        fetchers = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _reads(p / "cmdline", str(spool)) and _reads(p / "comm", "python")
        ]
        assert fetchers, "no fetcher process"
        for pid in fetchers:
            uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
            assert uid == pwd.getpwnam(user).pw_uid
        _ask(command, plan[0], tmp_path / "first")  # the fetcher moves on to plan[1]
        services.wait_until(
            lambda: (spool / plan[1]).exists() or (spool / f"{plan[1]}.failed").exists(),
            30,
            "the second segment tried",
        )
    assert victim.read_text() == "untouched"


def test_a_wal_file_planted_in_barmans_shared_default_spool_is_never_taken(bench, tmp_path):
    """barman-cloud-wal-restore hands over a file of the asked name from its spool directory
    before it looks in the archive, and its default spool is /var/tmp/walrestore, which any
    local user may create: a segment or history file planted there was taken as archived, by
    the plan's reads (history files, the window's last transaction) and by the recovering
    server's fallback command. Each names a spool of its own."""
    engine, target = BarmanCloud(), bench["target"]
    name = bench["base"].engine["first_segment"]
    shared = Path("/var/tmp/walrestore")
    made = not shared.exists()
    shared.mkdir(exist_ok=True)
    planted = shared / name
    planted.write_bytes(b"planted")
    root = tmp_path / "pitr"
    root.mkdir()
    creds = write_credentials_file(target, root / "aws-credentials", None)
    try:
        with engine.reader(target) as archive:  # the plan's reads
            archive.fetch(name, tmp_path / "fetched")
        command = engine.restore_command(target, creds, root / "wal-spool")
        command = command.replace("%f", name).replace("%p", str(tmp_path / "fallback"))
        subprocess.run(["sh", "-c", command], check=True, timeout=60, capture_output=True)  # noqa: S603
        assert planted.read_bytes() == b"planted"  # neither took it
    finally:
        planted.unlink(missing_ok=True)
        if made:
            shared.rmdir()
    fetched = (tmp_path / "fetched").read_bytes()
    assert len(fetched) == 16 * 1024 * 1024 and fetched == (tmp_path / "fallback").read_bytes()


def test_the_plan_reads_the_archive_through_one_barman_process(bench, tmp_path, monkeypatch):
    """The plan lists the archive and fetches its history files and the window's last segments
    (for pg_waldump): one barman process for all of it, where each file was a
    barman-cloud-wal-restore of its own (about 0.6 s of Python start). A file the archive lacks
    is a clear error, and the reader still answers after it."""
    log = tmp_path / "log"
    log.mkdir()
    _recording_bindir(BarmanCloud().bin_dir, ["python", "barman-cloud-wal-restore"], tmp_path / "barman", log)
    monkeypatch.setenv("KLB_BARMAN_BIN", str(tmp_path / "barman"))
    (window,) = pitr.wal_archive(bench["target"], bench["store"]).windows
    assert window.end_time == bench["last_commit"]  # pg_waldump read the last segment
    assert [p.name.split(".")[0] for p in log.glob("*.argv")] == ["python"]
    with BarmanCloud().reader(bench["target"]) as archive:
        with pytest.raises(ComponentFailed, match="WAL file 00000009.history is not in the archive s3://"):
            archive.fetch("00000009.history", tmp_path / "absent")
        archive.fetch(window.last_segment, tmp_path / "last")
    assert (tmp_path / "last").stat().st_size == 16 * 1024 * 1024
    assert not (tmp_path / "absent").exists()


def _reads(path: Path, text: str) -> bool:
    try:
        return text.encode() in path.read_bytes()
    except OSError:
        return False


def test_ambient_s3_keys_reach_the_prefetcher_through_the_credentials_file_not_the_servers_env(
    bench, new_dir, monkeypatch
):
    """A block without S3 keys uses the worker's (AWS_ACCESS_KEY_ID...): they go into the recovery's
    0600 credentials file, so the prefetcher (which gets no inherited environment) can fetch,
    and the recovering server's environment does not hold them."""
    key = "ambient-" + secrets.token_hex(12)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key)
    target = bench["target"].model_copy(update={"aws_access_key_id": None, "aws_secret_access_key": None})
    goal = RecoveryTarget(kind="lsn", lsn=bench["T_lsn"])
    result = pitr.recover(target, bench["base"], bench["store"], goal, pitr.RestoreOptions(directory=new_dir))
    assert len(result["wal_restored"]["from_spool"]) >= 2, result["wal_restored"]
    pid = int(Path(new_dir, "data", "postmaster.pid").read_text().split()[0])
    assert key.encode() not in _environ(pid)
    assert oct(Path(new_dir, "aws-credentials").stat().st_mode & 0o777) == "0o600"


def test_the_pods_own_identity_reaches_the_prefetcher_as_paths_never_secrets(
    bench, moto, tmp_path, monkeypatch
):
    """No keys on the block nor in the worker: the pod's identity (IRSA: a web identity token file
    and a role; EKS Pod Identity: a token file) is what fetches WAL. The prefetcher got none of it,
    so every segment fell back to one process each. It now gets the paths and names the recovering
    server keeps (here moto's STS exchanges the token), never a token or password value."""
    token, secret = tmp_path / "token", "never-" + secrets.token_hex(12)
    token.write_text("eyJ-web-identity-" + secret)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    identity = {
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/klb-pitr",
        "AWS_ROLE_SESSION_NAME": "klb-pitr",
        "AWS_ENDPOINT_URL_STS": moto.url,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(tmp_path / "pod-identity-token"),
    }
    for name, value in identity.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "pod-" + secret)
    monkeypatch.setenv("PGPASSWORD", "pw-" + secret)
    target = bench["target"].model_copy(update={"aws_access_key_id": None, "aws_secret_access_key": None})
    root = tmp_path / "pitr"
    root.mkdir()
    creds = write_credentials_file(target, root / "aws-credentials", None)
    first = bench["base"].engine["first_segment"]
    with prefetch.wal_spool(BarmanCloud(), target, root, creds, first, None) as command:
        spool = root / "wal-spool"
        environ = dict(
            item.split(b"=", 1) for item in _environ(_fetcher_pid(spool)).split(b"\0") if b"=" in item
        )
        assert (spool / prefetch.PLAN).exists(), (root / "wal-fetcher.log").read_text()
        services.wait_until(lambda: (spool / first).exists(), 30, "the first segment spooled")
        _ask(command, first, tmp_path / "first")
    assert secret.encode() not in b"".join(environ.values())
    assert {k: environ[k.encode()].decode() for k in identity if k.encode() in environ} == identity
    assert environ[b"AWS_SHARED_CREDENTIALS_FILE"] == str(creds).encode()
    assert (root / prefetch.RESTORE_LOG).read_text().split("\n")[0] == f"spool {first}"


def test_a_history_file_the_server_asks_for_comes_from_the_fetcher_decompressed(bench, moto, tmp_path):
    """A promoted server archives its timeline history (gzipped by barman-cloud-wal-archive): a
    recovery asks for it by name, and the running fetcher brings it back as it was written."""
    target = bench["target"].model_copy(update={"archive_url": f"s3://{bench['bucket']}/answers"})
    history = tmp_path / "00000002.history"
    _archive_history(moto, target, history, f"1\t{bench['T_lsn']}\tno recovery target specified\n")
    engine = BarmanCloud()
    root = tmp_path / "pitr"
    root.mkdir()
    creds = write_credentials_file(target, root / "aws-credentials", None)
    first = bench["base"].engine["first_segment"]
    with prefetch.wal_spool(engine, target, root, creds, first, None) as command:
        assert (root / "wal-spool" / prefetch.PLAN).read_text() == ""  # no segment here
        _ask(command, "00000002.history", tmp_path / "asked")
    assert (tmp_path / "asked").read_bytes() == history.read_bytes()
    assert prefetch.restore_report(root)["from_fetcher"] == ["00000002.history"]


# ---- secrets ----------------------------------------------------------------------------------

_RECORDER = """#!/bin/sh
# record this engine's argv, environment and credential files' modes, then run the real one
out={log}/$(basename "$0").$$
printf '%s\\n' "$@" > "$out.argv"
env > "$out.env"
for f in "$PGPASSFILE" "$AWS_SHARED_CREDENTIALS_FILE"; do
  [ -n "$f" ] && echo "$f $(stat -c %a "$f") $(stat -c %a "$(dirname "$f")")" >> "$out.files"
done
exec {real}/$(basename "$0") "$@"
"""


def _recording_bindir(real: Path, wrapped: list[str], bindir: Path, log: Path) -> None:
    bindir.mkdir()
    for path in real.iterdir():
        (bindir / path.name).symlink_to(path)
    for name in wrapped:
        (bindir / name).unlink(missing_ok=True)
        (bindir / name).write_text(_RECORDER.format(log=log, real=real))
        (bindir / name).chmod(0o755)


def test_no_engine_gets_a_password_or_key_in_its_environment_or_argv(bench, tmp_path, monkeypatch):
    """pg_basebackup reads the password from a private password file, barman-cloud the S3 keys from
    a private credentials file; inherited PGPASSWORD / AWS keys are not passed on either."""
    aws_secret = "aws-" + secrets.token_hex(16)  # moto accepts any key pair
    target = bench["target"].model_copy(update={"aws_secret_access_key": SecretStr(aws_secret)})
    password = target.password.get_secret_value()
    log = tmp_path / "log"
    log.mkdir()
    _recording_bindir(pitr.pg_bindir(), ["pg_basebackup"], tmp_path / "pg", log)
    _recording_bindir(BarmanCloud().bin_dir, ["python", "barman-cloud-wal-restore"], tmp_path / "barman", log)
    monkeypatch.setenv("KLB_PG_BINDIR", str(tmp_path / "pg"))
    monkeypatch.setenv("KLB_BARMAN_BIN", str(tmp_path / "barman"))
    monkeypatch.setenv("PGPASSWORD", "inherited-" + password)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "inherited-key")  # would beat the block's keys

    with backup_session(bench["store"].model_copy(update={"prefix": "secrets"}), "postgres-pitr") as session:
        pitr.backup(target, session)
        session.commit()
    with BarmanCloud().reader(target) as archive:
        archive.fetch(archive.names[0], tmp_path / "segment")
    assert (tmp_path / "segment").stat().st_size > 0

    runs = {p.name.split(".")[0] for p in log.glob("*.env")}
    assert runs == {"pg_basebackup", "python"}
    for record in log.glob("*.argv"):
        assert password not in record.read_text() and aws_secret not in record.read_text()
    for record in log.glob("*.env"):
        text = record.read_text()
        assert password not in text and aws_secret not in text, record.name
        assert "PGPASSWORD=" not in text, record.name
        if not record.name.startswith("pg_"):
            assert "AWS_SECRET_ACCESS_KEY=" not in text, record.name
    for record in log.glob("*.files"):
        path, file_mode, dir_mode = record.read_text().split()
        assert (file_mode, dir_mode) == ("600", "700"), record.name
        assert not Path(path).exists()  # removed once the engine is done


def test_the_recovering_server_keeps_the_ambient_identity_but_no_secret(bench, monkeypatch):
    """Without S3 keys anywhere, the server's restore_command needs the pod's own identity (IRSA,
    EKS Pod Identity): the paths to their token files stay, the tokens and passwords do not."""
    for name, value in {
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/var/run/secrets/pods.eks.amazonaws.com/token",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": "tok",
        "PGPASSWORD": "pw",
        "KLB_STORE_SECRET": "s",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    no_keys = bench["target"].model_copy(update={"aws_access_key_id": None, "aws_secret_access_key": None})
    removed = {name for name, value in server_env(no_keys).items() if value is None}
    assert {"AWS_CONTAINER_AUTHORIZATION_TOKEN", "PGPASSWORD", "KLB_STORE_SECRET"} <= removed
    assert not removed & {"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"}
    # with keys on the block, they are the ones meant: no ambient identity competes with them
    removed = {name for name, value in server_env(bench["target"]).items() if value is None}
    assert {"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_PROFILE"} <= removed
