"""Recovery points, restore plans (dry runs) and the full cluster restore, through the flows."""

from __future__ import annotations

import pytest

from flows.backup import backup_all, backup_component
from flows.drill import restore_drill
from flows.recovery import restore_plan
from flows.scenarios import full_cluster_restore
from tasks.errors import ComponentFailed, IntegrityError
from tasks.operations.drills import list_drill_records
from tasks.operations.plan import DR_STEPS
from tasks.operations.recovery import LABEL, _key, get_recovery_point, list_recovery_points, member_manifests
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup
from tasks.storage.layout import layout
from tasks.storage.records import get_record
from tests.drill.conftest import flip_byte

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_recovery_point_binds_the_ids_of_a_backup_all(local_store, prod):
    store = local_store()
    result = backup_all(targets={"app-state": prod.target()}, store=store)

    rp = get_recovery_point(store, result.recovery_point)
    assert set(rp.members) == {"app-state"} and rp.complete
    member = rp.members["app-state"]
    manifest = get_backup(store, member.backup_id, "app-state")
    assert member.backup_id == result.backups["app-state"].id
    assert member.source_time == manifest.source_time
    assert manifest.labels[LABEL] == rp.id
    assert set(rp.not_configured) == set(result.not_configured)  # the rest: said, not hidden
    assert member_manifests(store, rp) == {"app-state": manifest}
    assert get_recovery_point(store).id == rp.id  # 'latest'


def test_an_incomplete_point_is_recorded_but_never_latest(local_store, prod):
    store = local_store()
    good = backup_all(components=["app-state"], targets={"app-state": prod.target()}, store=store)
    state = backup_all(
        components=["app-state", "etcd"], targets={"app-state": prod.target()}, store=store, return_state=True
    )
    assert state.is_failed()  # etcd was asked for and is not there
    points = list_recovery_points(store)
    assert len(points) == 2 and not points[-1].complete and "etcd" in points[-1].failed
    assert get_recovery_point(store).id == good.recovery_point


def test_a_tampered_recovery_point_is_refused(local_store, prod):
    store = local_store()
    result = backup_all(components=["app-state"], targets={"app-state": prod.target()}, store=store)
    flip_byte(store, _key(store, result.recovery_point))
    with pytest.raises(IntegrityError):
        get_recovery_point(store, result.recovery_point)


def test_a_recovery_point_record_copied_over_another_is_refused_by_id(local_store, prod):
    """Point B's record copied into point A's place: asking for A by id must never give B (its
    members, its plan), as a manifest copied into another backup's folder is refused."""
    store = local_store()
    targets = {"app-state": prod.target()}
    a = backup_all(components=["app-state"], targets=targets, store=store).recovery_point
    b = backup_all(components=["app-state"], targets=targets, store=store).recovery_point
    backend = backend_for(store)
    backend.put_bytes(_key(store, a), backend.get_bytes(_key(store, b)))
    with pytest.raises(IntegrityError, match=f"names another point, {b}"):
        get_recovery_point(store, a)
    state = restore_plan(recovery_point=a, store=store, return_state=True)
    assert state.is_failed()
    with pytest.raises(IntegrityError, match=f"names another point, {b}"):
        state.result()


def test_restore_plan_is_a_dry_run_with_order_state_and_estimates(local_store, prod, drill_tmp):
    store = local_store()
    target = prod.target()
    result = backup_all(components=["app-state"], targets={"app-state": target}, store=store)
    before = prod.file.read_bytes()

    plan = restore_plan(recovery_point="latest", targets={"app-state": target}, store=store)

    assert plan["source"] == result.recovery_point
    assert [s["component"] for s in plan["steps"]][:3] == ["kubernetes", "volumes", "postgres"]
    app = next(s for s in plan["steps"] if s["component"] == "app-state")
    assert app["action"] == "replace" and app["current_state"]["steps"][0]["name"] == "sessions"
    assert app["estimate_basis"].startswith("no restore history")
    others = [s for s in plan["steps"] if s["component"] != "app-state"]
    assert all(s["action"] == "skip" for s in others)
    assert prod.file.read_bytes() == before and prod.restores == 0

    drill = restore_drill(recovery_point="latest", targets={"app-state": target}, store=store)
    plan = restore_plan(backup_id=result.backups["app-state"].id, targets={"app-state": target}, store=store)
    (app,) = plan["steps"]
    # measured throughput of the one drill (same backup, same size): the estimate is its RTO
    assert app["estimated_seconds"] == pytest.approx(drill.component("app-state").rto_seconds)
    assert app["estimate_basis"].endswith("median throughput of the last 1 restores/drills")
    assert "in place" in app["mode"]


def test_restore_plan_takes_latest_with_components_and_a_time(local_store, prod):
    from datetime import UTC, datetime

    from tasks.errors import BadInput

    store = local_store()
    target = prod.target()
    first = backup_component("app-state", target=target, store=store)
    second = backup_component("app-state", target=target, store=store)

    plan = restore_plan(
        backup_id="latest", components=["app-state"], targets={"app-state": target}, store=store
    )
    (app,) = plan["steps"]
    assert app["backup_id"] == second.id and app["action"] == "replace"
    assert "no fingerprint" in app["reason"] and app["mode"].startswith("in place")

    plan = restore_plan(
        at=first.source_time, components=["app-state"], targets={"app-state": target}, store=store
    )
    assert plan["steps"][0]["backup_id"] == first.id
    plan = restore_plan(at=datetime.now(UTC), targets={"app-state": target}, store=store)
    assert [s["component"] for s in plan["steps"] if s["backup_id"]] == ["app-state"]
    with pytest.raises(BadInput, match="needs components"):
        restore_plan(backup_id="latest", store=store)


def test_full_cluster_restore_plans_first_then_resumes_where_it_stopped(local_store, prod):
    store = local_store()
    target = prod.target()
    original = prod.file.read_bytes()
    backup_all(components=["app-state"], targets={"app-state": target}, store=store)
    prod.file.write_bytes(b"cluster lost\n")

    dry = full_cluster_restore(targets={"app-state": target}, store=store)
    assert dry["dry_run"] and prod.file.read_bytes() == b"cluster lost\n" and prod.restores == 0
    # the point the dry run showed, by id: 'latest' could be a newer one when the person acts
    assert dry["act_with"] == {"recovery_point": dry["recovery_point"], "dry_run": False}
    assert dry["recovery_point"] != "latest"

    fail = prod.file.with_name(prod.file.name + ".fail")
    fail.touch()  # the app-state step fails the first time
    state = full_cluster_restore(targets={"app-state": target}, store=store, dry_run=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(ComponentFailed, match="(?s)step app-state failed: .*resume with run_id="):
        state.result()  # the project's own error (was RuntimeError: logged with a traceback)
    run_id = str(state.message).split("run_id='")[1].split("'")[0]
    steps = {s: i for i, (s, _) in enumerate(DR_STEPS, start=1)}
    failed = get_record(store, layout(store).dr_step_key(run_id, steps["app-state"], "app-state"))
    assert failed["status"] == "failed"

    fail.unlink()
    done = full_cluster_restore(targets={"app-state": target}, store=store, dry_run=False, run_id=run_id)
    assert done["steps"]["app-state"] == "done"
    # app-state backups carry no fingerprint: the verify step says it could not check it
    assert done["steps"]["verify"].startswith("done; not verified: app-state (backup ")
    assert done["steps"]["namespaces-and-crds"] == "skipped"  # not configured here: said, not hidden
    assert prod.file.read_bytes() == original and prod.restores == 1

    again = full_cluster_restore(targets={"app-state": target}, store=store, dry_run=False, run_id=run_id)
    assert again["steps"]["app-state"] == "done (earlier run)" and prod.restores == 1


def test_recovery_point_drill_and_records_on_s3(s3_store, prod, drill_tmp):
    store = s3_store()
    target = prod.target()
    result = backup_all(components=["app-state"], targets={"app-state": target}, store=store)

    record = restore_drill(recovery_point="latest", targets={"app-state": target}, store=store)

    assert record.passed and record.recovery_point == result.recovery_point
    assert record.component("app-state").backup_id == result.backups["app-state"].id
    assert list_recovery_points(store)[-1].id == result.recovery_point
    assert [r.id for r in list_drill_records(store)] == [record.id]
    assert list(drill_tmp.iterdir()) == []


def test_a_backup_waits_while_full_cluster_restore_restores_its_component(local_store, tmp_path):
    """full_cluster_restore holds each component's lock while it restores it: a backup of that
    component started meanwhile begins only after the restore step ended."""
    import threading
    import time

    from blocks.app_state import AppStateStep, AppStateTarget
    from flows.backup import backup_component

    store = local_store()
    events = tmp_path / "events"
    state = tmp_path / "state"
    state.write_text("v1\n")
    target = AppStateTarget(
        steps=[
            AppStateStep(
                name="state",
                backup_command=["sh", "-c", 'echo backup >> "$EVENTS"; cat "$STATE"'],
                restore_command=[
                    "sh",
                    "-c",
                    'echo restore-start >> "$EVENTS"; sleep 3; cat > "$STATE"; echo restore-end >> "$EVENTS"',
                ],
                env={"EVENTS": str(events), "STATE": str(state)},
            )
        ]
    )
    backup_all(components=["app-state"], targets={"app-state": target}, store=store)
    events.unlink()

    restore = threading.Thread(
        target=full_cluster_restore,
        kwargs={"targets": {"app-state": target}, "store": store, "dry_run": False},
    )
    restore.start()
    deadline = time.monotonic() + 120
    while not (events.exists() and "restore-start" in events.read_text()):
        assert time.monotonic() < deadline and restore.is_alive(), "the restore step never started"
        time.sleep(0.05)
    backup_component("app-state", target=target, store=store)
    restore.join(timeout=120)

    assert events.read_text().split() == ["restore-start", "restore-end", "backup"]
