"""`klb`: each command's output and exit code against a real store (and, for the commands that
run flows, the session's Prefect server)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from blocks.store import LocalStore
from flows.console import OK, PROBLEM, UNUSABLE, main
from tasks.storage.backends import backend_for
from tasks.storage.catalog import list_backups
from tasks.storage.layout import layout
from tasks.storage.session import backup_session
from tests.console_helpers import app_target, files, sample_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path, monkeypatch) -> LocalStore:
    """The default store `klb` uses with no --store: $KLB_STORE_DIR."""
    monkeypatch.delenv("KLB_STORE", raising=False)
    monkeypatch.setenv("KLB_STORE_DIR", str(tmp_path / "store"))
    return LocalStore()


def klb(capsys, *argv: str) -> tuple[int, list[str], str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def put_backup(store, component: str, age: timedelta = timedelta(0), data: bytes = b"x" * 5000):
    with backup_session(store, component, {"batch": "test"}) as s:
        s.write("data", [data])
        s.source_time = datetime.now(UTC) - age
        return s.commit(retention=timedelta(days=14))


def row(lines: list[str], first: str) -> str:
    found = [line for line in lines if line.split()[:1] == [first]]
    assert found, f"no row for {first} in:\n" + "\n".join(lines)
    return found[0]


def test_status_fresh_backup_is_ok_and_unconfigured_components_say_so(store, capsys):
    put_backup(store, "app-state")
    code, lines, _ = klb(capsys, "status")
    assert code == OK
    assert lines[0] == f"store: {store.location} (default local store ($KLB_STORE_DIR))"
    assert lines[1].split()[:3] == ["COMPONENT", "EVERY", "NEWEST"]
    app = row(lines, "app-state")
    assert "4h" in app and "verified" in app and app.endswith("ok")
    assert row(lines, "etcd").endswith("not configured")
    assert any(line.startswith("etcd: target not configured") for line in lines)
    for component in ("postgres", "kubernetes", "volumes", "etcd", "rabbitmq", "app-state", "postgres-pitr"):
        row(lines, component)


def test_status_overdue_component_exits_1(store, capsys):
    put_backup(store, "app-state", age=timedelta(hours=6))  # every 4 h (+25 % grace)
    put_backup(store, "etcd")
    code, lines, _ = klb(capsys, "status")
    assert code == PROBLEM
    assert "OVERDUE (every 4h)" in row(lines, "app-state")
    assert row(lines, "app-state").split()[3] == "6h"  # the AGE column
    assert row(lines, "etcd").endswith("ok")
    code, lines, _ = klb(capsys, "status", "etcd")  # only the components asked about
    assert code == OK and [line.split()[0] for line in lines[2:3]] == ["etcd"]


def test_damaged_backup_shows_in_status_and_list_and_exits_1(store, capsys):
    good = put_backup(store, "app-state")
    bad = put_backup(store, "app-state")
    backend = backend_for(store)
    key = layout(store).manifest_key(bad.id)
    backend.put_bytes(key, backend.get_bytes(key).replace(b'"size"', b'"sizes"', 1))
    code, lines, _ = klb(capsys, "status", "app-state")
    assert code == PROBLEM
    assert f"DAMAGED: 1 backup(s) ({bad.id})" in row(lines, "app-state")
    assert good.id in row(lines, "app-state")  # the newest GOOD backup
    code, lines, _ = klb(capsys, "backups", "list", "app-state")
    assert code == OK
    assert "damaged: manifest unreadable" in row(lines, bad.id)
    assert "verified" in row(lines, good.id)


def test_a_backup_whose_object_is_gone_is_damaged_in_list_and_describe(store, capsys):
    """An object deleted behind its manifest's back: `backups list` said damaged, but `backups
    describe` still said 'verified' (from the manifest's write-time check)."""
    m = put_backup(store, "app-state")
    backend_for(store).delete_keys([m.objects[0].key])
    code, lines, _ = klb(capsys, "backups", "list", "app-state")
    assert "damaged: objects missing from the store: data" in row(lines, m.id)
    code, lines, _ = klb(capsys, "backups", "describe", m.id)
    text = "\n".join(lines)
    assert "status      damaged" in text and "objects missing from the store: data" in text, text
    assert "verified" not in text


def test_backups_list_shows_every_column(store, capsys):
    m = put_backup(store, "etcd", age=timedelta(minutes=90))
    code, lines, err = klb(capsys, "backups", "list")
    assert code == OK and "EventsWorker" not in err
    assert lines[1].split() == ["ID", "KIND", "TIME", "AGE", "SIZE", "STATUS", "EXPIRES"]
    cells = row(lines, m.id).split()
    assert cells[1] == "on-demand"  # the kind: why it was taken
    assert cells[2] == m.source_time.strftime("%Y-%m-%d")
    assert cells[4] == "1h30m"
    assert "verified" in cells and "ago" in cells
    assert m.expires_at.strftime("%Y-%m-%d") in row(lines, m.id)
    code, lines, _ = klb(capsys, "backups", "list", "postgres")
    assert code == OK and lines[1:] == ["no backups"]


def test_backups_describe_is_a_readable_summary(store, capsys):
    m = put_backup(store, "app-state")
    code, lines, _ = klb(capsys, "backups", "describe", m.id)
    text = "\n".join(lines)
    assert code == OK
    assert f"backup      {m.id}" in text and "component   app-state" in text
    assert "1 object(s)" in text and "status      verified" in text
    assert "data" in text and m.objects[0].sha256[:16] in text
    assert "batch=test" in text
    missing = m.id[:-6] + "000000"
    code, lines, err = klb(capsys, "backups", "describe", missing)
    assert code == UNUSABLE and f"no backup {missing}" in err and "klb backups list" in err


def test_verify_passes_then_finds_a_damaged_object(store, capsys):
    m = put_backup(store, "app-state")
    code, lines, _ = klb(capsys, "verify", m.id)
    assert code == OK and row(lines, m.id).endswith("verified")
    code, lines, _ = klb(capsys, "verify")  # no id: the newest of each component
    assert code == OK and row(lines, m.id).endswith("verified")
    path = Path(store.path) / m.objects[0].key
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 1
    path.write_bytes(bytes(blob))
    code, lines, _ = klb(capsys, "verify", m.id)
    assert code == PROBLEM and "DAMAGED" in row(lines, m.id)


def test_bad_input_exits_2_and_changes_nothing(store, capsys):
    m = put_backup(store, "app-state")
    code, _, err = klb(capsys, "restore", "app-state", m.id)
    assert code == UNUSABLE and "--yes" in err
    code, _, err = klb(capsys, "restore", "app-state", m.id, "--yes", "--options", "[1]")
    assert code == UNUSABLE and "--options must be a JSON object" in err
    code, _, err = klb(capsys, "backup", "--all", "--target", "production")  # was: ignored
    assert code == UNUSABLE and "--target names one component's target" in err
    with pytest.raises(SystemExit) as exc:
        main(["backups", "list", "not-a-component"])
    assert exc.value.code == 2
    assert [b.id for b in list_backups(store, "app-state")] == [m.id]


def test_the_installed_command_is_quiet(store, tmp_path):
    """`klb` as a process: the store header and the table on stdout, nothing on stderr (no
    Prefect EventsWorker warning)."""
    put_backup(store, "app-state")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.console", "backups", "list"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"store: {store.location}")
    assert proc.stderr == ""
    alias = subprocess.run(
        [sys.executable, "-m", "flows.catalog", "list", "app-state"], capture_output=True, text=True, env=env
    )
    ids = [line.split()[0] for line in proc.stdout.splitlines()[1:]]  # ages move on between runs
    assert alias.returncode == 0 and [line.split()[0] for line in alias.stdout.splitlines()[1:]] == ids


# ---- commands that run flows (the session's Prefect server) -----------------------------------


@pytest.fixture
def saved(prefect_server, tmp_path, store):
    """A saved app-state target block and a saved store block pointing at the same store."""
    src = sample_dir(tmp_path, size=200_000)
    target = app_target(src, tmp_path / "restored")
    name = "console-" + secrets.token_hex(4)
    target.save(name)
    LocalStore(path=store.path).save(name)
    return {"target": name, "store": name, "src": src, "dest": tmp_path / "restored"}


def test_backup_restore_drill_and_plan_run_here(saved, store, capsys):
    code, lines, _ = klb(
        capsys, "--store", saved["store"], "backup", "app-state", "--target", saved["target"]
    )
    assert code == OK and lines[0] == f"store: {store.location} (--store)"
    backup_id = lines[1].split()[0]
    assert backup_id.startswith("app-state-") and lines[1].endswith("verified")

    code, lines, _ = klb(capsys, "plan", "app-state", "--backup-id", backup_id)
    assert code == OK and backup_id in "\n".join(lines)

    code, lines, _ = klb(capsys, "restore", "app-state", backup_id, "--target", saved["target"], "--yes")
    assert code == OK and lines[1] == f"restored app-state from {backup_id}"
    assert lines[2].startswith("restore record: restore-")
    assert files(saved["dest"]) == files(saved["src"])

    os.environ["KLB_APP_STATE_TARGET"] = saved["target"]  # the drill uses the default target
    try:
        code, lines, _ = klb(capsys, "drill", "app-state")
        assert code == OK and "verified" in row(lines, "app-state")
        code, lines, _ = klb(capsys, "status", "app-state")
        assert code == OK
        assert "verified" in row(lines, "app-state").split("(drill")[0]
        assert "RTO" in row(lines, "app-state") and "RPO" in row(lines, "app-state")
    finally:
        del os.environ["KLB_APP_STATE_TARGET"]


def test_failed_backup_exits_1(saved, store, capsys, tmp_path):
    from blocks.app_state import AppStateStep, AppStateTarget

    broken = "broken-" + secrets.token_hex(4)
    AppStateTarget(steps=[AppStateStep(name="x", backup_command=["false"], restore_command=["true"])]).save(
        broken
    )
    code, lines, _ = klb(capsys, "backup", "app-state", "--target", broken)
    assert code == PROBLEM and "backup of app-state FAILED" in lines[1]


def test_unknown_store_block_exits_2(saved, capsys):
    code, _, err = klb(capsys, "--store", "no-such-store-" + secrets.token_hex(3), "status")
    assert code == UNUSABLE and "no store block named" in err


def test_deployment_that_does_not_exist_is_a_clear_error(saved, capsys):
    code, _, err = klb(capsys, "backup", "app-state", "--deployment", "--idempotency-key", "k1")
    assert code == UNUSABLE
    assert "no deployment 'backup-component/backup-app-state'" in err and "prefect deploy" in err


def test_idempotency_key_is_stable_for_the_same_command():
    from flows.console.run import idempotency_key

    a = idempotency_key("restore-component/restore", {"component": "etcd", "backup_id": "latest"})
    b = idempotency_key("restore-component/restore", {"backup_id": "latest", "component": "etcd"})
    c = idempotency_key("restore-component/restore", {"component": "etcd", "backup_id": "x"})
    assert a == b != c and a.startswith("klb-")
    assert idempotency_key("x", {}, "given") == "given"


def test_status_a_backup_the_sweep_found_damaged_exits_1(store, capsys):
    """Damage found after the write (a health record, the manifest still loads) is a problem
    like an unreadable manifest: status names it and exits 1, even with an older good backup."""
    from tasks.storage.health import mark_damaged

    good = put_backup(store, "app-state", age=timedelta(hours=1))
    bad = put_backup(store, "app-state")
    mark_damaged(store, bad.id, "state: sha256 mismatch")
    code, lines, _ = klb(capsys, "status", "app-state")
    assert code == PROBLEM
    assert f"DAMAGED: 1 backup(s) ({bad.id})" in row(lines, "app-state")
    assert good.id in row(lines, "app-state")


def test_status_a_safety_backup_does_not_hide_an_overdue_component(store, capsys):
    """Only routine backups count as the newest good one ('latest' would never restore a safety
    or forensic backup): a restore's safety backup must not make an overdue component look ok."""
    from tasks.models import KIND_LABEL, BackupKind

    routine = put_backup(store, "app-state", age=timedelta(hours=6))
    with backup_session(store, "app-state", {KIND_LABEL: BackupKind.safety.value}) as s:
        s.write("data", [b"the state a restore replaced"])
        s.commit(retention=timedelta(days=14))
    code, lines, _ = klb(capsys, "status", "app-state")
    assert code == PROBLEM
    assert "OVERDUE (every 4h)" in row(lines, "app-state") and routine.id in row(lines, "app-state")


def test_a_prefect_api_that_does_not_answer_is_one_clear_line(store, tmp_path):
    """PREFECT_API_URL naming a server that is down: the commands that need it exit 2 with one
    line naming the API (without the password a URL may carry), never a traceback; `status`
    says it could not check a named target and exits 1, never "not configured" and 0."""
    from sandbox.services import free_port

    put_backup(store, "app-state")
    url = f"http://ops:pw-{secrets.token_hex(4)}@127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": url, "KLB_APP_STATE_TARGET": "prod"}
    for argv in (["backup", "app-state"], ["drill", "--deployment"], ["--store", "prod", "backups", "list"]):
        proc = subprocess.run(
            [sys.executable, "-m", "flows.console", *argv], capture_output=True, text=True, env=env
        )
        assert proc.returncode == UNUSABLE, (argv, proc.stderr[-2000:])
        assert proc.stderr.startswith("klb: error: the Prefect API at http://127.0.0.1:"), proc.stderr
        assert "Traceback" not in proc.stderr and "pw-" not in proc.stderr + proc.stdout
    status = [sys.executable, "-m", "flows.console", "status", "app-state"]
    proc = subprocess.run(status, capture_output=True, text=True, env=env)
    assert proc.returncode == PROBLEM, proc.stdout + proc.stderr
    assert "UNKNOWN: its target could not be checked" in proc.stdout and "not configured" not in proc.stdout


def test_a_drill_that_fails_before_its_record_never_shows_an_older_report(saved, store, capsys):
    """`klb drill` whose own record could not be stored printed the newest stored drill, an
    older one that PASSED, above the failure: now only what this drill says."""
    from tasks.operations.drills import DrillRecord, save_drill_record

    yesterday = datetime.now(UTC) - timedelta(days=1)
    old = DrillRecord(
        id="olddrill1",
        started_at=yesterday,
        finished_at=yesterday,
        rto_target_minutes=30,
        rpo_target_hours=6,
        rpo_window_hours=168,
        components=[],
        rto_seconds=1.0,
        rpo_seconds=1.0,
        worst_gap_seconds=1.0,
        failures=[],
    )
    save_drill_record(store, old)
    today = Path(store.location) / "drills" / f"{datetime.now(UTC):%Y-%m-%d}"
    today.parent.mkdir(parents=True, exist_ok=True)
    today.write_text("not a folder: the drill's record cannot be stored")
    os.environ["KLB_APP_STATE_TARGET"] = saved["target"]
    try:
        code, lines, _ = klb(capsys, "drill", "app-state")
    finally:
        del os.environ["KLB_APP_STATE_TARGET"]
    text = "\n".join(lines)
    assert code == PROBLEM and "FAILED" in text
    assert "olddrill1" not in text and "PASSED" not in text


def test_a_restore_that_fails_part_way_says_where_the_target_stands(saved, store, capsys, tmp_path):
    """`klb restore` said 'FAILED (the target was not cut over)' and cut the error to its first
    line, when the first step had been restored and the error's next line said so."""
    from blocks.app_state import AppStateStep, AppStateTarget

    first = tmp_path / "first.restored"
    name = "two-steps-" + secrets.token_hex(4)
    AppStateTarget(
        steps=[
            AppStateStep(
                name="first", backup_command=["echo", "a"], restore_command=["sh", "-c", f"cat > {first}"]
            ),
            AppStateStep(
                name="second", backup_command=["echo", "b"], restore_command=["sh", "-c", "cat; exit 3"]
            ),
        ]
    ).save(name)
    code, lines, _ = klb(capsys, "--store", saved["store"], "backup", "app-state", "--target", name)
    backup_id = lines[1].split()[0]

    code, lines, _ = klb(
        capsys, "--store", saved["store"], "restore", "app-state", backup_id, "--target", name, "--yes"
    )

    text = "\n".join(lines)
    assert code == PROBLEM and "restore of app-state FAILED" in text and "not cut over" not in text
    assert "steps ['first'] were restored, step 'second' failed" in text and first.read_text() == "a\n"


def test_status_a_newer_narrower_backup_does_not_hide_an_overdue_whole_target(
    prefect_server, store, capsys, monkeypatch
):
    """The newest good backup in `klb status` is the newest that covers the whole configured
    target, as 'latest' for a restore is: a newer backup holding only part of it (one step of two
    here; one database, one namespace, one vhost alike) says so in a note and does not make a
    component whose full backups stopped look fresh."""
    from blocks.app_state import AppStateStep, AppStateTarget

    name = f"status-scope-{secrets.token_hex(3)}"
    step = {"backup_command": ["true"], "restore_command": ["true"]}
    AppStateTarget(steps=[AppStateStep(name="data", **step), AppStateStep(name="db", **step)]).save(name)
    monkeypatch.setenv("KLB_APP_STATE_TARGET", name)
    with backup_session(store, "app-state", {"batch": "test"}) as s:
        s.write("data", [b"x" * 100])
        s.write("db", [b"y" * 100])
        s.source_time = datetime.now(UTC) - timedelta(hours=6)  # every 4 h (+25 % grace)
        whole = s.commit(retention=timedelta(days=14))
    part = put_backup(store, "app-state")  # only "data": fresh, but not the whole target
    code, lines, _ = klb(capsys, "status", "app-state")
    assert code == PROBLEM
    assert whole.id in row(lines, "app-state") and "OVERDUE (every 4h)" in row(lines, "app-state")
    assert any(part.id in line and "does not hold steps ['db']" in line for line in lines), lines

    # only narrower backups: none good for the whole target
    monkeypatch.setenv("KLB_STORE_DIR", str(Path(store.path).parent / "only-narrower"))
    put_backup(LocalStore(), "app-state")
    code, lines, _ = klb(capsys, "status", "app-state")
    assert code == PROBLEM and "OVERDUE (no good backup of its whole target)" in row(lines, "app-state")


def test_verify_without_id_reports_a_newest_backup_whose_manifest_is_damaged(store, capsys):
    """`klb verify` checks the newest backup of each component: when the newest one's manifest
    no longer reads, the older one behind it verifying must not make the answer 'all verified'."""
    good = put_backup(store, "app-state")
    bad = put_backup(store, "app-state")
    backend = backend_for(store)
    key = layout(store).manifest_key(bad.id)
    backend.put_bytes(key, backend.get_bytes(key).replace(b'"size"', b'"sizes"', 1))
    code, lines, _ = klb(capsys, "verify")
    assert code == PROBLEM, lines
    assert "DAMAGED" in row(lines, bad.id)
    assert row(lines, good.id).endswith("verified")  # the rest is still checked and shown


def test_status_a_component_whose_last_drill_failed_is_not_ok_and_exits_1(store, capsys):
    """The last drill that covered app-state could not restore it: `klb status` showed FAILED in
    the drill column but STATE 'ok' and exit 0, so a script or a glance at STATE saw nothing."""
    from tasks.operations.drills import save_drill_record
    from tests.record_helpers import drill

    put_backup(store, "app-state")
    put_backup(store, "etcd")
    save_drill_record(store, drill(datetime.now(UTC) - timedelta(hours=1), passed=False))
    code, lines, _ = klb(capsys, "status", "app-state")
    assert code == PROBLEM, lines
    assert "DRILL FAILED" in row(lines, "app-state") and not row(lines, "app-state").endswith("ok")
    code, lines, _ = klb(capsys, "status", "etcd")  # a component the drill did not cover
    assert "no drill covered it" in row(lines, "etcd") and row(lines, "etcd").endswith("ok")
    save_drill_record(store, drill(datetime.now(UTC) - timedelta(minutes=5), passed=True))
    code, lines, _ = klb(capsys, "status", "app-state")  # a newer drill proved it again
    assert code == OK and row(lines, "app-state").endswith("ok"), lines


def test_status_a_component_verified_in_a_drill_that_failed_as_a_whole_is_not_ok(store, capsys):
    """A drill whose restore of app-state verified but whose RTO was over its target failed as a
    whole: the drill metrics say it failed for app-state, while `klb status` showed STATE ok and
    exit 0 (only the 'last drill' line said FAILED)."""
    from tasks.operations.drills import save_drill_record
    from tests.record_helpers import drill

    put_backup(store, "app-state")
    slow = drill(datetime.now(UTC) - timedelta(hours=1))
    slow = slow.model_copy(update={"rto_seconds": 3600.0, "failures": ["RTO 1h over the target of 30 min"]})
    save_drill_record(store, slow)
    code, lines, _ = klb(capsys, "status", "app-state")
    assert code == PROBLEM, lines
    assert "DRILL FAILED" in row(lines, "app-state") and not row(lines, "app-state").endswith("ok")


def test_an_idempotency_key_without_deployment_is_refused_and_runs_nothing(saved, store, capsys):
    """`--idempotency-key` only means something for a triggered deployment: given without
    `--deployment` it was ignored and the backup (or restore) ran here, once per call, while the
    operator counted on a retry attaching to the first run."""
    argv = ["backup", "app-state", "--target", saved["target"], "--idempotency-key", "once"]
    code, _, err = klb(capsys, *argv)
    assert code == UNUSABLE and "--idempotency-key" in err and "--deployment" in err
    assert list_backups(store, "app-state") == []


def test_an_empty_flag_value_is_refused_not_taken_for_the_default(saved, store, capsys):
    """`--target "$TARGET"` with TARGET unset gave `--target ''`, which klb took for 'no target
    given': the restore went to the component's default target (production, here the one
    $KLB_APP_STATE_TARGET names) instead of the one meant. Likewise an empty --options restored
    the whole component instead of the steps meant, and an empty --store used another store."""
    code, lines, _ = klb(capsys, "backup", "app-state", "--target", saved["target"])
    assert code == OK
    backup_id = lines[1].split()[0]
    os.environ["KLB_APP_STATE_TARGET"] = saved["target"]
    try:
        for argv in (
            ["restore", "app-state", backup_id, "--yes", "--target", ""],
            ["restore", "app-state", backup_id, "--yes", "--options", ""],
            ["--store", "", "restore", "app-state", backup_id, "--yes"],
        ):
            with pytest.raises(SystemExit) as exc:
                main(argv)
            assert exc.value.code == UNUSABLE, argv
            assert "must not be empty" in capsys.readouterr().err, argv
    finally:
        del os.environ["KLB_APP_STATE_TARGET"]
    assert files(saved["dest"]) == {}  # nothing was restored anywhere


def test_status_a_newest_backup_whose_objects_were_deleted_is_damaged_not_ok(store, capsys):
    """The data of the newest backup was deleted behind its manifest's back (a writer of the
    store, a bad lifecycle rule): `klb status` named it the newest good backup, 'verified', STATE
    ok, exit 0, and `klb backups list` said verified; a restore of 'latest' then fails on it."""
    good = put_backup(store, "app-state")
    gone = put_backup(store, "app-state")
    (Path(store.path) / gone.objects[0].key).unlink()
    code, lines, _ = klb(capsys, "status", "app-state")
    assert code == PROBLEM, lines
    app = row(lines, "app-state")
    assert f"DAMAGED: 1 backup(s) ({gone.id})" in app and app.split()[2] == good.id
    code, lines, _ = klb(capsys, "backups", "list", "app-state")
    assert "damaged" in row(lines, gone.id) and "verified" not in row(lines, gone.id)


def test_verify_without_id_checks_the_backup_latest_restores_not_only_a_newer_safety_backup(store, capsys):
    """After a restore with its safety backup, the newest backup of the component is that safety
    backup: `klb verify` read only it and said all verified, while the backup 'latest' restores
    (the newest routine one) was damaged."""
    routine = put_backup(store, "app-state")
    with backup_session(store, "app-state", {"kind": "safety"}) as s:
        s.write("data", [b"the state a restore replaced"])
        safety = s.commit(retention=timedelta(days=14))
    path = Path(store.path) / routine.objects[0].key
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 1
    path.write_bytes(bytes(blob))
    code, lines, _ = klb(capsys, "verify")
    assert code == PROBLEM, lines
    assert "DAMAGED" in row(lines, routine.id) and row(lines, safety.id).endswith("verified")
