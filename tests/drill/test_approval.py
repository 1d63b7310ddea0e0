"""A paused checklist restore as an SRE meets it in the Prefect UI, against a real Prefect server:
the form's schema and description, the checklist artifact read while paused, approve / reject
through `resume_flow_run`, cancel while paused; rollback rules; restore metrics and alerts."""

from __future__ import annotations

import ast
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run
from prefect.states import Cancelling

from blocks.restore_guard import MaintenanceWindow, RestoreGuard
from flows.backup import backup_component
from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
from tasks.errors import BadInput, IntegrityError
from tasks.operations import restore_checklist
from tasks.operations.checklist import ITEMS, Refused
from tasks.operations.plan import action_of
from tasks.operations.restores import safety_mark
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup, list_backups
from tasks.storage.layout import backup_prefix, layout
from tasks.verbs import restore_options

pytestmark = pytest.mark.usefixtures("prefect_server")
GUARD = RestoreGuard(require_approval=True, approval_timeout_seconds=120)


class Running:
    """A checklist restore in a thread, as a deployment run would be: the test is the human."""

    def __init__(self, flow=restore_with_checklist, **kwargs) -> None:
        self.state = None
        self.flow = flow
        self.thread = threading.Thread(target=self._run, kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, **kwargs) -> None:
        self.state = self.flow(**kwargs, return_state=True)

    def paused_run(self, timeout: float = 120, not_keyset: dict | None = None):
        """The paused run (asking with a form other than `not_keyset`: a second pause)."""
        paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                runs = client.read_flow_runs(flow_run_filter=paused)
                runs = [r for r in runs if r.state.state_details.run_input_keyset != not_keyset]
                if runs:
                    return runs[0]
                assert self.thread.is_alive(), f"the restore ended without pausing: {self.state}"
                time.sleep(0.2)
        raise AssertionError("the restore never paused for approval")

    def wait(self):
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()
        return self.state


def _checklist_artifact(flow_run_id) -> str:
    """The newest version of the run's checklist artifact."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=["restore-checklist"]),
            )
        )
    assert found, "no checklist artifact while paused"
    return max(found, key=lambda a: a.created).data


def _form(flow_run_id) -> tuple[dict, str]:
    """The form of the run's current pause, found where the UI finds it (its paused state)."""
    with get_client(sync_client=True) as client:
        keyset = client.read_flow_run(flow_run_id).state.state_details.run_input_keyset
        schema = client.read_flow_run_input(flow_run_id, keyset["schema"])
        description = client.read_flow_run_input(flow_run_id, keyset["description"])
    import json

    return json.loads(schema), json.loads(description)


def test_a_paused_restore_shows_every_answer_and_the_form_carries_the_decision(local_store, prod):
    store = local_store()
    target = prod.target()
    older = backup_component("app-state", target=target, store=store)
    newer = backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"broken\n")
    run = Running(component="app-state", backup_id=older.id, target=target, store=store, guard=GUARD)
    flow_run = run.paused_run()

    # the checklist, read while paused: every answer so far, with its detail; approval pending
    md = _checklist_artifact(flow_run.id)
    for item in ITEMS[:6]:
        assert f"1. **{item}**: " in md
    assert "1. **approval**: pending" in md and "sha256 match" in md
    assert "**maintenance window**: ⚠ WARNING: no maintenance window configured" in md
    assert "nobody told" in md and "|" not in md  # a list that wraps, no wide table
    # the form: explicit decision, required name, a reason required for a rejection, descriptions
    schema, description = _form(flow_run.id)
    assert schema["required"] == ["decision", "by"]
    assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]
    assert all(p.get("description") for p in schema["properties"].values())
    assert schema["then"]["required"] == ["reason"]
    record_id = description.split("**Restore id:** `")[1].split("`")[0]
    safety_id = description.split("**Safety backup:** `")[1].split("`")[0]
    assert older.id in description and f"A newer backup exists:** `{newer.id}`" in description
    assert "in place" in description and "Decide by" in description and "rollback_restore" in description
    assert "nobody told" in description and "sha256 match" in description  # the checklist answers
    assert get_backup(store, safety_id, "app-state").raw_size == len(b"broken\n")
    assert "Nothing was changed" not in description and "0.0 min" not in description
    assert max(len(line) for line in description.splitlines() if not line.startswith("- ")) < 120

    # the server refuses an anonymous approval and a rejection without a reason; still paused
    for bad in ({"decision": "approve", "by": ""}, {"decision": "reject", "by": "alice"}, {"by": "alice"}):
        with pytest.raises(Exception, match="422|[Vv]alidation|required|short"):
            resume_flow_run(flow_run.id, run_input=bad)
    prod.file.write_bytes(b"written while a person decided\n")
    resume_flow_run(flow_run.id, run_input={"decision": "approve", "by": "alice", "reason": "db lost"})
    state = run.wait()

    record = state.result()
    assert record.id == record_id and record.status == "restored" and record.approved_by == "alice"
    assert record.checklist[-2].detail == "approved by alice: db lost"
    # the rollback point is taken again after the wait: it holds what was written meanwhile
    assert record.checklist[-1].item == "prepare rollback" and "after approval" in record.checklist[-1].detail
    assert record.safety_backup_id != safety_id
    assert get_backup(store, record.safety_backup_id, "app-state").raw_size == len(
        b"written while a person decided\n"
    )
    assert safety_mark(store, safety_id)["restore_status"] == "superseded"
    assert safety_mark(store, record.safety_backup_id)["restore_status"] == "restored"
    assert prod.file.read_bytes() not in (b"broken\n", b"written while a person decided\n")
    assert prod.restores == 1
    final = _checklist_artifact(flow_run.id)
    assert "## Result: restored" in final and f"rollback_restore(restore_id='{record.id}')" in final


def test_a_rejected_restore_changes_nothing_and_cannot_be_rolled_back(local_store, prod):
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"current data\n")
    run = Running(component="app-state", target=target, store=store, guard=GUARD)
    flow_run = run.paused_run()
    resume_flow_run(flow_run.id, run_input={"decision": "reject", "by": "bob", "reason": "wrong backup"})
    state = run.wait()

    assert state.is_failed()
    with pytest.raises(Refused, match="rejected by bob: wrong backup"):
        state.result()
    assert prod.file.read_bytes() == b"current data\n" and prod.restores == 0
    record = load_restore_record(store, _record_id(flow_run.id))
    assert record.status == "refused" and record.safety_backup_id
    assert safety_mark(store, record.safety_backup_id)["restore_status"] == "refused"
    md = _checklist_artifact(flow_run.id)
    assert "rollback_restore(" not in md and "nothing to roll back" in md

    with pytest.raises(BadInput, match="replaced nothing, so there is nothing to roll back"):
        rollback_restore(record.id, target=target, store=store)
    assert prod.file.read_bytes() == b"current data\n" and prod.restores == 0
    assert load_restore_record(store, record.id).status == "refused"


def test_cancelling_a_paused_restore_ends_it_with_a_record_and_a_marked_safety_backup(local_store, prod):
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"current data\n")
    run = Running(component="app-state", target=target, store=store, guard=GUARD)
    flow_run = run.paused_run()
    with get_client(sync_client=True) as client:  # what `prefect flow-run cancel <id>` does
        client.set_flow_run_state(flow_run.id, Cancelling(message="wrong ticket"))
    started = time.monotonic()
    state = run.wait()

    assert time.monotonic() - started < 30  # it stopped polling at once, not at the deadline
    assert state.type is StateType.CANCELLED and "nothing restored" in state.message
    record = load_restore_record(store, _record_id(flow_run.id))
    assert record.status == "cancelled" and record.checklist[-1].mark.value == "cancelled"
    mark = safety_mark(store, record.safety_backup_id)
    assert mark["restore_id"] == record.id and mark["restore_status"] == "cancelled"
    assert "nothing to roll back" in mark["note"]
    assert prod.file.read_bytes() == b"current data\n" and prod.restores == 0
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run.id).state.type is StateType.CANCELLED


def test_rollback_takes_its_own_safety_backup_is_idempotent_and_can_be_undone(local_store, prod):
    store = local_store()
    target = prod.target()
    original = prod.file.read_bytes()
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"state before the restore\n")
    record = restore_with_checklist("app-state", target=target, store=store)
    assert prod.file.read_bytes() == original

    rolled = rollback_restore(record.id, target=target, store=store)

    assert prod.file.read_bytes() == b"state before the restore\n" and prod.restores == 2
    assert rolled.status == "rolled back" and rolled.rolled_back_by
    rollback = load_restore_record(store, rolled.rolled_back_by)
    assert rollback.kind == "rollback" and rollback.rolls_back == record.id
    assert rollback.backup_id == record.safety_backup_id and rollback.status == "restored"
    own = get_backup(store, rollback.safety_backup_id, "app-state")  # what the rollback replaced
    assert own.raw_size == len(original)
    assert [line.item for line in rollback.checklist] == ITEMS

    again = rollback_restore(record.id, target=target, store=store)  # idempotent: nothing happens
    assert again.rolled_back_by == rolled.rolled_back_by and prod.restores == 2

    rollback_restore(rollback.id, target=target, store=store)  # the rollback rolled back
    assert prod.file.read_bytes() == original and prod.restores == 3


def test_restore_type_flows_push_failures_and_are_covered_by_the_alerts(
    local_store, prod, pushgateway, monkeypatch
):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from scripts.create_automations import FLOWS

    monkeypatch.setenv("KLB_PUSHGATEWAY_URL", pushgateway.url)

    def failures() -> float:
        with urllib.request.urlopen(f"{pushgateway.url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "restore_failure_total" and s.labels.get("component") == "app-state":
                    return s.value
        return 0.0

    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    before = failures()
    state = restore_with_checklist(
        "app-state", target=target, store=store, required_objects=["x"], return_state=True
    )
    assert state.is_failed() and failures() == before + 1

    names = set()
    for path in Path(__file__).resolve().parents[2].joinpath("flows").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "name" and isinstance(node.value, ast.Constant):
                names.add(node.value.value)
    restore_type = {n for n in names if any(w in n for w in ("restore", "rollback", "pitr", "corruption"))}
    assert {
        "restore-with-checklist",
        "rollback-restore",
        "full-cluster-restore",
        "partial-restore",
    } <= restore_type
    assert restore_type - {"restore-plan"} <= set(FLOWS)


def _restore_id_asked(flow_run_id) -> str:
    """The restore id the paused run's form asks about."""
    return _form(flow_run_id)[1].split("**Restore id:** `")[1].split("`")[0]


def _record_id(flow_run_id) -> str:
    md = _checklist_artifact(flow_run_id)
    return "restore-" + md.split("(restore-")[1].split(")")[0]


def test_restore_options_are_checked_before_anything_and_the_form_shows_them(local_store, prod):
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"current data\n")
    # a typo is refused before the checklist: no safety backup, no record a rollback could act on
    with pytest.raises(BadInput, match="step"):
        restore_with_checklist("app-state", target=target, store=store, options={"step": ["sessions"]})
    assert [m.kind.value for m in list_backups(store, "app-state")] == ["on-demand"]
    assert not list(backend_for(store).list_keys(layout(store).records_dir("restores")))
    assert prod.file.read_bytes() == b"current data\n" and prod.restores == 0

    options = {"steps": ["sessions"]}
    run = Running(component="app-state", target=target, store=store, guard=GUARD, options=options)
    flow_run = run.paused_run()
    _, description = _form(flow_run.id)
    assert '- **Options:** `steps` = `["sessions"]`' in description
    resume_flow_run(flow_run.id, run_input={"decision": "approve", "by": "alice"})
    record = run.wait().result()
    assert record.status == "restored" and record.options == options
    # options that change the kind of action, not only its scope, change what the form says
    assert "plan only" in action_of("etcd", restore_options("etcd", {}))
    assert "SWAP ITSELF" in action_of("etcd", restore_options("etcd", {"execute_swap": True}))
    assert "cut over" in action_of("postgres", restore_options("postgres", {}))
    assert "aside only" in action_of("postgres", restore_options("postgres", {"cut_over": False}))


def test_an_approval_given_after_the_window_closed_changes_nothing(local_store, prod, monkeypatch):
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"current data\n")
    now = datetime.now(UTC)
    closes = now + timedelta(minutes=10)  # open at the checklist's window item, however slow the run
    window = MaintenanceWindow(start=(now - timedelta(minutes=1)).time(), end=closes.time())
    guard = RestoreGuard(require_approval=True, approval_timeout_seconds=300, window=window)
    run = Running(component="app-state", target=target, store=store, guard=guard)
    flow_run = run.paused_run()
    # The person answers after the window closed: the clock the restore reads from now on is past
    # the window's end (waiting it out took 40 s). A time read before the wait is not moved, so a
    # re-check that reused one would restore, and fail this test, as with a real wait.
    late = closes + timedelta(seconds=1) - datetime.now(UTC)

    class AfterTheWindow(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + late

    monkeypatch.setattr(restore_checklist, "datetime", AfterTheWindow)
    resume_flow_run(flow_run.id, run_input={"decision": "approve", "by": "alice"})
    state = run.wait()

    assert state.is_failed()
    with pytest.raises(Refused, match="closed while the restore waited for approval"):
        state.result()
    assert prod.file.read_bytes() == b"current data\n" and prod.restores == 0
    assert load_restore_record(store, _record_id(flow_run.id)).status == "refused"


def test_a_restore_record_copied_over_another_is_refused_by_rollback(local_store, prod):
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    first = restore_with_checklist("app-state", target=target, store=store)
    prod.file.write_bytes(b"written since\n")
    second = restore_with_checklist("app-state", target=target, store=store)
    prod.file.write_bytes(b"live data\n")
    backend = backend_for(store)
    a_key, b_key = (layout(store).restore_record_key(r.id) for r in (first, second))
    backend.put_bytes(a_key, backend.get_bytes(b_key))

    with pytest.raises(IntegrityError, match=f"names another restore, {second.id}"):
        rollback_restore(first.id, target=target, store=store)
    assert prod.file.read_bytes() == b"live data\n" and prod.restores == 2


def test_a_retried_restore_asks_again_and_never_reuses_the_first_answer(local_store, prod):
    """The same flow run run again (the UI's Retry, flow retries): its second pause is a new
    form with no answer; it could not pause at all (the form's key was taken: 409)."""
    store = local_store()
    target = prod.target()
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"current data\n")
    Path(f"{prod.file}.fail").touch()  # the first restore fails, so the flow retries
    # a resume counts as a run of the flow run too: 2 retries give the failed attempt one more
    retried = restore_with_checklist.with_options(retries=2, retry_delay_seconds=0)
    run = Running(flow=retried, component="app-state", target=target, store=store, guard=GUARD)
    first = run.paused_run()
    asked = _restore_id_asked(first.id)
    resume_flow_run(first.id, run_input={"decision": "approve", "by": "alice"})
    second = run.paused_run(not_keyset=first.state.state_details.run_input_keyset)
    assert second.id == first.id  # the same flow run, asking anew about a new restore
    assert _restore_id_asked(second.id) != asked
    resume_flow_run(second.id, run_input={"decision": "reject", "by": "bob", "reason": "not again"})
    state = run.wait()

    with pytest.raises(Refused, match="rejected by bob: not again"):
        state.result()
    assert prod.file.read_bytes() == b"current data\n" and prod.restores == 0


def test_a_backup_deleted_while_a_person_decided_is_not_restored(local_store, prod):
    """Retention takes no lock: the backup approved can be gone (or half gone) by the time the
    answer comes. Nothing is restored; the record says why."""
    store = local_store()
    target = prod.target()
    older = backup_component("app-state", target=target, store=store)
    backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"current data\n")
    run = Running(component="app-state", backup_id=older.id, target=target, store=store, guard=GUARD)
    flow_run = run.paused_run()
    backend = backend_for(store)
    keys = backend.list_keys(backup_prefix(store, older.id))  # retention deletes the objects first
    backend.delete_keys([k for k in keys if not k.endswith("manifest.json")])
    resume_flow_run(flow_run.id, run_input={"decision": "approve", "by": "alice"})
    state = run.wait()

    with pytest.raises(Refused, match=f"backup {older.id} was verified, but its objects .* left the store"):
        state.result()
    assert prod.file.read_bytes() == b"current data\n" and prod.restores == 0
    assert load_restore_record(store, _record_id(flow_run.id)).status == "refused"


def test_a_second_restore_of_the_component_waits_and_its_rollback_point_holds_the_first(local_store, prod):
    """Two SREs restore the same component at once: the second waits for the first (approval
    included) before its checklist, so its safety backup holds what the first restored; it
    never ran its restore while the first waited for approval, nor kept a stale rollback point."""
    store = local_store()
    target = prod.target()
    good = backup_component("app-state", target=target, store=store)
    prod.file.write_bytes(b"broken\n")
    first = Running(component="app-state", backup_id=good.id, target=target, store=store, guard=GUARD)
    flow_run = first.paused_run()
    second = Running(component="app-state", backup_id=good.id, target=target, store=store)

    def safety_backups() -> list:
        return [m for m in list_backups(store, "app-state") if m.kind.value == "safety"]

    deadline = time.monotonic() + 10  # room for the second to (wrongly) go ahead
    while time.monotonic() < deadline and len(safety_backups()) < 2 and second.thread.is_alive():
        time.sleep(0.2)
    resume_flow_run(flow_run.id, run_input={"decision": "approve", "by": "alice"})
    a, b = first.wait().result(), second.wait().result()

    assert a.status == b.status == "restored" and prod.restores == 2
    assert b.started_at < a.finished_at < b.checklist[0].at  # it waited, then checked
    assert get_backup(store, b.safety_backup_id, "app-state").raw_size == good.raw_size


def test_a_rollback_goes_back_into_the_restores_own_target_never_the_default(
    local_store, prod, tmp_path, monkeypatch
):
    """A restore into a named target ('staging'), rolled back with no target: the safety copy
    of staging went into the default target (production). It goes back into staging; another
    target is refused."""
    from tests.drill.conftest import Prod

    store = local_store()
    staging = Prod(tmp_path / "staging")
    suffix = secrets.token_hex(3)
    prod.target().save(f"prod-{suffix}")
    staging.target().save(f"staging-{suffix}")
    monkeypatch.setenv("KLB_APP_STATE_TARGET", f"prod-{suffix}")  # the default target
    backup_component("app-state", target=staging.target(), store=store)
    staging.file.write_bytes(b"staging before the restore\n")
    prod.file.write_bytes(b"live production\n")
    record = restore_with_checklist("app-state", target=f"staging-{suffix}", store=store)

    with pytest.raises(BadInput, match=f"went into staging-{suffix}.*is another target"):
        rollback_restore(record.id, target=f"prod-{suffix}", store=store)
    rollback_restore(record.id, store=store)

    assert staging.file.read_bytes() == b"staging before the restore\n"
    assert prod.file.read_bytes() == b"live production\n" and prod.restores == 0
    assert load_restore_record(store, record.id).target == f"staging-{suffix}"
