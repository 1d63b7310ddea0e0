"""The pre-restore checklist through the real flows: window, safety backup first, rollback."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from blocks.restore_guard import MaintenanceWindow, RestoreGuard
from flows.backup import backup_component
from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
from tasks.operations.checklist import Mark, Refused
from tasks.storage.catalog import get_backup, list_backups
from tasks.storage.records import get_record
from tests.drill.conftest import flip_byte

pytestmark = pytest.mark.usefixtures("prefect_server")
ALL_DAY = (time(0, 0), time(23, 59, 59))


def _not_today() -> MaintenanceWindow:
    return MaintenanceWindow(days=[(datetime.now(UTC).weekday() + 3) % 7], start=ALL_DAY[0], end=ALL_DAY[1])


def test_window_contains_handles_days_and_midnight():
    night = MaintenanceWindow(days=[0], start=time(22, 0), end=time(2, 0))  # Monday 22:00 -> Tue 02:00
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    assert night.contains(monday.replace(hour=23))
    assert night.contains(datetime(2026, 11, 24, 1, 59, tzinfo=UTC))  # Tuesday, inside Monday's window
    assert not night.contains(datetime(2026, 11, 24, 2, 0, tzinfo=UTC))
    assert not night.contains(monday.replace(hour=1))  # Monday 01:00 belongs to Sunday's window
    assert not night.contains(monday.replace(hour=21))


def test_a_window_written_in_utc_with_z_lets_the_restore_run(local_store, prod):
    """'02:00Z' is UTC written plainly: the window kept it aware and every check of it failed
    with a TypeError (aware against naive), leaving a 'failed' restore record."""
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    window = MaintenanceWindow(start="00:00:00Z", end="23:59:59Z")
    record = restore_with_checklist(
        "app-state", target=target, store=store, guard=RestoreGuard(window=window)
    )
    assert record.status == "restored" and prod.restores == 1
    assert window.start == ALL_DAY[0] and window.start.tzinfo is None
    assert {line.item: line.mark for line in record.checklist}["maintenance window"] is Mark.ok


def test_checklist_refuses_outside_the_window_and_changes_nothing(local_store, prod):
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"newer production state\n")
    state = restore_with_checklist(
        "app-state", target=target, store=store, guard=RestoreGuard(window=_not_today()), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(Refused, match="outside .* force=True"):
        state.result()
    assert prod.file.read_bytes() == b"newer production state\n" and prod.restores == 0
    assert len(list_backups(store, "app-state")) == 1  # no safety backup: nothing was started
    # the refusal is recorded, item by item
    records = [k for k in _keys(store) if k.endswith("/record.json")]
    assert len(records) == 1
    lines = get_record(store, records[0])["checklist"]
    assert [(x["item"], x["mark"]) for x in lines] == [
        ("verify backup integrity", "ok"),
        ("confirm backup contents", "ok"),
        ("maintenance window", "REFUSED"),
    ]


def test_forced_restore_takes_the_safety_backup_first_and_rollback_restores_it(local_store, prod):
    store = local_store()
    target = prod.target()
    old = prod.file.read_bytes()
    backup = backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"state just before the restore\n")

    record = restore_with_checklist(
        "app-state",
        backup_id=backup.id,
        target=target,
        store=store,
        guard=RestoreGuard(window=_not_today()),
        force=True,
        required_objects=["sessions"],
    )

    assert record.status == "restored" and prod.file.read_bytes() == old and prod.restores == 1
    marks = {line.item: line.mark for line in record.checklist}
    assert marks["maintenance window"] is Mark.warn and "FORCED" in record.checklist[2].detail
    assert marks["notify stakeholders"] is Mark.warn  # none configured: said so
    assert marks["prepare rollback"] is Mark.ok and marks["document current state"] is Mark.ok
    safety = get_backup(store, record.safety_backup_id, "app-state")
    assert safety.labels == {"kind": "safety", "purpose": "pre-restore-safety", "restore": record.id}
    restore_started = record.finished_at - timedelta(seconds=record.duration_seconds)
    assert safety.finished_at <= restore_started  # complete before anything was replaced
    assert get_record(store, record.current_state_key)["steps"][0]["name"] == "sessions"
    assert load_restore_record(store, record.id).status == "restored"

    rolled = rollback_restore(record.id, target=target, store=store)

    assert prod.file.read_bytes() == b"state just before the restore\n"
    assert rolled.status == "rolled back" and load_restore_record(store, record.id).rolled_back_at


def test_missing_required_contents_and_a_corrupt_backup_are_refused(local_store, prod):
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    state = restore_with_checklist(
        "app-state", target=target, store=store, required_objects=["users"], return_state=True
    )
    with pytest.raises(Refused, match="lacks \\['users'\\]"):
        state.result()
    flip_byte(store, list_backups(store, "app-state")[-1].object("sessions").key)
    state = restore_with_checklist("app-state", target=target, store=store, return_state=True)
    with pytest.raises(Refused, match="verify backup integrity"):
        state.result()
    assert prod.restores == 0 and len(list_backups(store, "app-state")) == 1


def test_approval_not_given_in_time_is_a_refusal(local_store, prod):
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    guard = RestoreGuard(require_approval=True, approval_timeout_seconds=1)
    state = restore_with_checklist("app-state", target=target, store=store, guard=guard, return_state=True)
    assert state.is_failed()
    assert prod.restores == 0
    records = [get_record(store, k) for k in _keys(store) if k.endswith("/record.json")]
    assert records[-1]["checklist"][-1]["item"] == "approval"
    assert records[-1]["checklist"][-1]["mark"] == "REFUSED"


def _keys(store):
    from tasks.storage.backends import backend_for

    return sorted(backend_for(store).list_keys(store.prefix))


@pytest.fixture
def webhook():
    """A real HTTP endpoint on loopback that keeps what it is sent."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def test_stakeholders_are_told_through_notification_blocks(local_store, prod, webhook):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    url, received = webhook
    name = "klb-oncall-" + prod.file.parent.parent.name.lower().replace("_", "-")[-20:]
    CustomWebhookNotificationBlock(name="oncall", url=url, json_data={"text": "{{subject}}: {{body}}"}).save(
        name, overwrite=True
    )
    store = local_store()
    target = prod.target()
    backup = backup_component("app-state", target=target, store=store)
    guard = RestoreGuard(notify=[f"custom-webhook/{name}", "custom-webhook/no-such-block"])

    record = restore_with_checklist("app-state", target=target, store=store, guard=guard)

    line = next(x for x in record.checklist if x.item == "notify stakeholders")
    assert line.mark is Mark.warn and "no-such-block" in line.detail  # one told, one could not be
    assert len(received) == 1 and backup.id in received[0]["text"] and record.id in received[0]["text"]


def test_an_approved_restore_goes_ahead_with_the_approver_recorded(local_store, prod):
    import threading

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"broken\n")
    stop = threading.Event()

    def approver():  # a human on the other side of the UI: answers the paused run's form
        paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
        with get_client(sync_client=True) as client:
            while not stop.wait(0.2):
                for run in client.read_flow_runs(flow_run_filter=paused):
                    resume_flow_run(
                        run.id, run_input={"decision": "approve", "by": "alice", "reason": "db lost"}
                    )
                    return

    thread = threading.Thread(target=approver, daemon=True)
    thread.start()
    try:
        guard = RestoreGuard(require_approval=True, approval_timeout_seconds=60)
        record = restore_with_checklist("app-state", target=target, store=store, guard=guard)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert record.status == "restored" and record.approved_by == "alice"
    assert [line.item for line in record.checklist[-2:]] == ["approval", "prepare rollback"]
    assert record.checklist[-2].detail == "approved by alice: db lost"
    assert prod.file.read_bytes() != b"broken\n" and prod.restores == 1


def test_when_production_is_gone_the_restore_needs_without_rollback(local_store, prod):
    store = local_store()
    target = prod.target()
    original = prod.file.read_bytes()
    backup_component("app-state", target=target, store=store)
    prod.file.unlink()  # the state is lost: `cat` fails, so no safety backup can be taken
    state = restore_with_checklist("app-state", target=target, store=store, return_state=True)
    with pytest.raises(Refused, match="without_rollback=True"):
        state.result()
    assert not prod.file.exists() and prod.restores == 0

    record = restore_with_checklist("app-state", target=target, store=store, without_rollback=True)

    assert record.status == "restored" and record.safety_backup_id is None
    assert prod.file.read_bytes() == original
    line = next(x for x in record.checklist if x.item == "prepare rollback")
    assert line.mark is Mark.warn and "no rollback" in line.detail


def test_a_rollback_of_one_step_puts_back_that_step_only(local_store, tmp_path):
    """A restore of steps=['sessions'] was rolled back by putting back every step of the safety
    backup: writes made since to 'carts', which the restore never touched, were undone."""
    from blocks.app_state import AppStateTarget
    from tests.drill.conftest import Prod

    sessions, carts = Prod(tmp_path / "sessions"), Prod(tmp_path / "carts")
    carts_step = carts.target().steps[0].model_copy(update={"name": "carts"})
    target = AppStateTarget(steps=[sessions.target().steps[0], carts_step])
    store = local_store()
    backup = backup_component("app-state", target=target, store=store)
    sessions.file.write_bytes(b"sessions before the restore\n")

    record = restore_with_checklist(
        "app-state", backup_id=backup.id, target=target, store=store, options={"steps": ["sessions"]}
    )
    assert sessions.restores == 1 and carts.restores == 0
    carts.file.write_bytes(b"carts written since the restore\n")

    rolled = rollback_restore(record.id, target=target, store=store)

    assert rolled.status == "rolled back"
    assert sessions.file.read_bytes() == b"sessions before the restore\n"
    assert carts.file.read_bytes() == b"carts written since the restore\n" and carts.restores == 0
    assert load_restore_record(store, rolled.rolled_back_by).options == {"steps": ["sessions"]}
