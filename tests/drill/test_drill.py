"""Restore drills through the real flows, against a Prefect server, with the app-state component
(the lead extends these to every component with a drill hook after the merge)."""

from __future__ import annotations

import pytest
from prefect.settings import PREFECT_API_URL

from flows.backup import backup_all, backup_component
from flows.drill import DrillFailed, drill_report_text, last_drill_report, restore_drill
from tasks.operations.drills import HealthCheck, Status, drill_report_markdown, list_drill_records
from tasks.storage.catalog import list_backups
from tests.drill.conftest import flip_byte, processes_mentioning

pytestmark = pytest.mark.usefixtures("prefect_server")


def _failed_record(store, state):
    assert state.is_failed(), state
    with pytest.raises(DrillFailed) as err:
        state.result()
    record = list_drill_records(store)[-1]
    assert record.id in str(err.value) and not record.passed
    return record, str(err.value)


def test_drill_restores_app_state_into_isolation_and_passes(local_store, prod, drill_tmp):
    store = local_store()
    target = prod.target()
    backup_all(components=["app-state"], targets={"app-state": target}, store=store)
    before = prod.file.read_bytes()

    record = restore_drill(targets={"app-state": target}, store=store)

    assert record.passed, record.failures
    app = record.component("app-state")
    assert app.status is Status.verified and app.production_unchanged is True
    check = app.checks["checks"]["sessions"]
    assert check["by"] == "sha256" and check["bytes"] == len(before)
    # every other component is reported, as not covered with a reason: never passed silently
    others = [c for c in record.components if c.component != "app-state"]
    assert others and all(c.status is Status.not_covered and c.reason for c in others)
    # isolation: production untouched, no drill directory or process left behind
    assert prod.file.read_bytes() == before and prod.restores == 0
    assert list(drill_tmp.iterdir()) == []
    assert processes_mentioning(f"KLB_DRILL_DIR={drill_tmp}") == []
    # the record is stored for trends, and the text report names every component
    assert list_drill_records(store)[-1].id == record.id
    text = drill_report_text(record)
    assert "PASSED" in text and "app-state" in text and "verified" in text and "not configured" in text
    # the verdict says what it stands on, in the headline, the artifact and the run's state message
    assert record.coverage == "1 of 7 components verified, 6 not configured"
    assert text.splitlines()[0].endswith("PASSED: 1 of 7 components verified, 6 not configured")
    markdown = drill_report_markdown(record)
    assert markdown.startswith(f"# Restore drill {record.id}: PASSED: 1 of 7 components verified")
    assert all("**" not in line for line in markdown.splitlines() if line.startswith("|"))
    for other in others:  # reasons in full, never cut
        assert other.reason in text and other.reason in markdown
    state = restore_drill(targets={"app-state": target}, store=store, return_state=True)
    assert state.is_completed() and "PASSED: 1 of 7 components verified, 6 not configured" in state.message


def test_a_drill_command_that_leaves_a_process_running_is_cleaned_up(local_store, prod, drill_tmp):
    store = local_store()
    target = prod.target()
    target.steps[0].drill_restore_command = [
        "sh",
        "-c",
        'cat > "$KLB_DRILL_DIR/state"; sleep 300 >/dev/null 2>&1 </dev/null &',
    ]
    backup_component("app-state", target=target, store=store)
    record = restore_drill(components=["app-state"], targets={"app-state": target}, store=store)
    assert record.passed
    assert processes_mentioning(f"KLB_DRILL_DIR={drill_tmp}") == [] and list(drill_tmp.iterdir()) == []


def test_rto_and_rpo_match_the_timestamps_of_the_runs(local_store, prod, drill_tmp):
    store = local_store()
    target = prod.target()
    for _ in range(3):
        backup_component("app-state", target=target, store=store)
    backups = list_backups(store, "app-state")

    record = restore_drill(components=["app-state"], targets={"app-state": target}, store=store)

    app = record.component("app-state")
    assert app.backup_id == backups[-1].id
    assert app.rto_seconds == (app.verified_at - app.restore_started).total_seconds() > 0
    # where the RTO went: the restore (checked), the cleanup and the health checks, within the RTO
    assert set(app.rto_phases) == {"restore", "cleanup", "health checks"}
    assert 0 < sum(app.rto_phases.values()) <= app.rto_seconds + 0.02
    assert f"{app.component}: restore " in drill_report_text(record)
    assert record.rto_seconds == app.rto_seconds  # one component, no drill-wide checks
    assert app.restore_started >= record.started_at and app.verified_at <= record.finished_at
    assert app.rpo_age_seconds == (record.started_at - backups[-1].source_time).total_seconds()
    times = [b.source_time for b in backups] + [record.started_at]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert app.worst_gap_seconds == max(gaps)
    assert record.rpo_seconds == app.rpo_age_seconds and record.worst_gap_seconds == max(gaps)


def test_the_worst_gap_is_measured_between_backups_latest_could_restore(local_store, prod, drill_tmp):
    """A backup the sweep found damaged, or a safety copy (never what 'latest' restores), is no
    restore point: counted as good backups they split the gap and hid it."""
    from flows.maintenance import verify_backups

    store = local_store()
    target = prod.target()
    first = backup_component("app-state", target=target, store=store)
    damaged = backup_component("app-state", target=target, store=store)
    backup_component("app-state", target=target, store=store, labels={"kind": "safety"})
    last = backup_component("app-state", target=target, store=store)
    flip_byte(store, list_backups(store, "app-state")[1].object("sessions").key)
    verify_backups(components=["app-state"], newest=10, store=store, return_state=True)

    record = restore_drill(components=["app-state"], targets={"app-state": target}, store=store)

    app = record.component("app-state")
    assert app.status is Status.verified and app.backup_id == last.id
    times = {b.id: b.source_time for b in list_backups(store, "app-state")}
    assert damaged.id in times  # still listed: only not counted
    gaps = [times[last.id] - times[first.id], record.started_at - times[last.id]]
    assert app.worst_gap_seconds == max(g.total_seconds() for g in gaps)


def test_rto_target_below_the_measured_time_fails_the_drill(local_store, prod, drill_tmp):
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    state = restore_drill(
        components=["app-state"],
        targets={"app-state": target},
        store=store,
        rto_target_minutes=0.0001,
        return_state=True,
    )
    record, message = _failed_record(store, state)
    assert record.component("app-state").status is Status.verified  # the restore was fine ...
    assert record.rto_seconds >= 0.006 and "RTO" in message  # ... the target was missed
    assert list(drill_tmp.iterdir()) == []


def test_drill_of_a_corrupted_backup_fails_names_the_component_and_cleans_up(local_store, prod, drill_tmp):
    store = local_store()
    target = prod.target()
    manifest = backup_component("app-state", target=target, store=store)
    flip_byte(store, list_backups(store, "app-state")[-1].object("sessions").key)
    before = prod.file.read_bytes()

    state = restore_drill(
        components=["app-state"], targets={"app-state": target}, store=store, return_state=True
    )

    record, message = _failed_record(store, state)
    app = record.component("app-state")
    assert app.status is Status.failed and app.backup_id == manifest.id
    assert "app-state" in message and "sessions" in app.reason
    assert "IntegrityError" in app.reason or "corrupt" in app.reason
    assert list(drill_tmp.iterdir()) == [] and processes_mentioning(f"KLB_DRILL_DIR={drill_tmp}") == []
    assert prod.file.read_bytes() == before
    assert "FAILED" in drill_report_text(record) and last_drill_report(store) == drill_report_text(record)


def test_a_step_without_a_drill_command_is_not_covered_and_proves_nothing(local_store, prod, drill_tmp):
    store = local_store()
    target = prod.target(drill=False)
    backup_component("app-state", target=target, store=store)
    state = restore_drill(
        components=["app-state"], targets={"app-state": target}, store=store, return_state=True
    )
    record, message = _failed_record(store, state)
    assert record.component("app-state").status is Status.not_covered
    assert "drill_restore_command" in record.component("app-state").reason
    assert "proves nothing" in message


def test_a_step_left_out_of_the_drill_fails_it_even_when_another_step_verified(local_store, prod, drill_tmp):
    """One step of the backup was restored and verified, the other never restored (no
    drill_restore_command): the drill PASSED, though half of what the backup holds was never
    shown to restore. A configured part not verified fails the drill like a configured component."""
    from blocks.app_state import AppStateStep, AppStateTarget

    store = local_store()
    carts = AppStateStep(name="carts", backup_command=["echo", "cart"], restore_command=["true"])
    target = AppStateTarget(steps=[prod.target().steps[0], carts])
    backup_component("app-state", target=target, store=store)
    state = restore_drill(
        components=["app-state"], targets={"app-state": target}, store=store, return_state=True
    )
    record, message = _failed_record(store, state)
    app = record.component("app-state")
    assert app.status is Status.failed and app.verified_at is None
    assert "carts" in message and "drill_restore_command" in message


def test_verify_command_and_health_checks_decide(local_store, prod, drill_tmp):
    store = local_store()
    # argv is not a shell: sh only expands the variable the drill sets
    good = prod.target(verify=["sh", "-c", 'grep -q alpha "$KLB_DRILL_DIR/state"'])
    backup_component("app-state", target=good, store=store)
    healthy = HealthCheck(name="ok", component="app-state", command=["sh", "-c", 'test -n "$KLB_DRILL_ID"'])
    api = HealthCheck(name="prefect-api", url=PREFECT_API_URL.value() + "/health")
    record = restore_drill(
        components=["app-state"], targets={"app-state": good}, store=store, health_checks=[healthy, api]
    )
    app = record.component("app-state")
    assert app.checks["checks"]["sessions"]["by"] == "verify_command" and app.health[0].ok
    assert record.health[0].ok and record.health[0].detail.startswith("HTTP 200")
    assert record.rto_seconds >= app.rto_seconds  # drill-wide checks count in the overall RTO

    bad = prod.target(verify=["sh", "-c", 'grep -q omega "$KLB_DRILL_DIR/state"'])
    state = restore_drill(
        components=["app-state"], targets={"app-state": bad}, store=store, return_state=True
    )
    record, _ = _failed_record(store, state)
    assert "app-state verify sessions exited with status 1" in record.component("app-state").reason

    broken = HealthCheck(name="api", url=PREFECT_API_URL.value() + "/no-such-page", expect_status=200)
    state = restore_drill(
        components=["app-state"],
        targets={"app-state": good},
        store=store,
        health_checks=[broken],
        return_state=True,
    )
    record, message = _failed_record(store, state)
    assert record.component("app-state").status is Status.verified and "health check api: HTTP 404" in message
    assert list(drill_tmp.iterdir()) == []


def test_rpo_target_is_checked_per_component(local_store, prod, drill_tmp):
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    common = {"components": ["app-state"], "targets": {"app-state": target}, "store": store}
    state = restore_drill(**common, rpo_target_hours=0.000001, return_state=True)  # 3.6 ms
    record, message = _failed_record(store, state)
    app = record.component("app-state")
    assert app.status is Status.verified and app.rpo_target_hours == 0.000001
    assert "app-state: RPO" in message and "worst gap" in message
    # an explicit per-component target (e.g. daily volume backups) overrides the drill-wide one
    record = restore_drill(**common, rpo_target_hours=0.000001, rpo_targets_hours={"app-state": 6})
    assert record.passed and record.component("app-state").rpo_target_hours == 6


def test_tar_step_drills_in_its_own_directory(local_store, tmp_path, drill_tmp):
    """The hook directly (no flow): a multi-file restore needs a verify_command."""
    from blocks.app_state import AppStateStep, AppStateTarget
    from tasks.components import app_state
    from tasks.errors import IntegrityError
    from tasks.storage.session import backup_session

    src = tmp_path / "src"
    (src / "sessions").mkdir(parents=True)
    (src / "sessions" / "active.json").write_text('{"active_sessions": 1284}\n')
    (src / "flags.yaml").write_text("max_concurrency: 64\n")
    step = AppStateStep(
        name="app-files",
        backup_command=["tar", "-C", str(src), "-cf", "-", "."],
        restore_command=["tar", "-C", str(src), "-xf", "-"],
        drill_restore_command=["tar", "-xf", "-"],
        verify_command=["test", "-s", "sessions/active.json"],
    )
    target = AppStateTarget(steps=[step])
    store = local_store()
    with backup_session(store, "app-state") as session:
        app_state.backup(target, session)
        manifest = session.commit()

    report = app_state.drill(target, manifest, store, "t1")
    assert report["verified"] and report["checks"]["app-files"]["by"] == "verify_command"

    step.verify_command = None  # two files: sha256 of "the" file cannot decide
    with pytest.raises(IntegrityError, match="wrote 2 files.*verify_command"):
        app_state.drill(target, manifest, store, "t2")
    assert list(drill_tmp.iterdir()) == []
    assert sorted(p.name for p in src.rglob("*")) == ["active.json", "flags.yaml", "sessions"]


def test_a_drill_id_already_recorded_is_refused_and_its_record_kept(local_store, prod, drill_tmp):
    """A drill id names one drill: reusing one overwrote the earlier record (the trend lost it)."""
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    first = restore_drill(
        components=["app-state"], targets={"app-state": target}, store=store, drill_id="again1"
    )
    state = restore_drill(
        components=["app-state"],
        targets={"app-state": target},
        store=store,
        drill_id="again1",
        return_state=True,
    )
    assert state.is_failed() and "BadInput: drill id 'again1' is the id of a recorded drill" in state.message
    assert [(r.id, r.finished_at) for r in list_drill_records(store)] == [("again1", first.finished_at)]
