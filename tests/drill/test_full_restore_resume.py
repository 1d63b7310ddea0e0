"""A full cluster restore resumed after a failure restores and verifies into the targets, with the
options, it started with: other ones are refused before anything changes. And its verify step
never counts a component it could not check (no fingerprint) as verified."""

from __future__ import annotations

import contextlib

import pytest

from flows.backup import backup_all
from flows.recovery import load_restore_record
from flows.scenarios import full_cluster_restore
from tasks.errors import BadInput, ComponentFailed
from tasks.operations.recovery import list_recovery_points
from tests.drill.conftest import Prod

pytestmark = pytest.mark.usefixtures("prefect_server")


def _failed_run(store, target, prod: Prod) -> str:
    fail = prod.file.with_name(prod.file.name + ".fail")
    fail.touch()  # the app-state step fails the first time
    state = full_cluster_restore(targets={"app-state": target}, store=store, dry_run=False, return_state=True)
    assert state.is_failed()
    fail.unlink()
    return str(state.message).split("run_id='")[1].split("'")[0]


def test_a_resume_with_other_targets_or_options_is_refused_and_the_same_ones_finish(
    local_store, prod, tmp_path
):
    store = local_store()
    target = prod.target()
    original = prod.file.read_bytes()
    backup_all(components=["app-state"], targets={"app-state": target}, store=store)
    prod.file.write_bytes(b"cluster lost\n")
    run_id = _failed_run(store, target, prod)

    other = Prod(tmp_path / "other")
    other_before = other.file.read_bytes()
    with pytest.raises(BadInput, match="other targets"):
        full_cluster_restore(targets={"app-state": other.target()}, store=store, dry_run=False, run_id=run_id)
    with pytest.raises(BadInput, match="other targets"):  # started with a block object: say it again
        full_cluster_restore(store=store, dry_run=False, run_id=run_id)
    with pytest.raises(BadInput, match="started with options"):
        full_cluster_restore(
            targets={"app-state": target},
            store=store,
            dry_run=False,
            run_id=run_id,
            options={"app-state": {"steps": ["sessions"]}},
        )
    assert other.file.read_bytes() == other_before and other.restores == 0
    assert prod.file.read_bytes() == b"cluster lost\n" and prod.restores == 0

    done = full_cluster_restore(targets={"app-state": target}, store=store, dry_run=False, run_id=run_id)
    assert done["steps"]["app-state"] == "done" and prod.file.read_bytes() == original
    # app-state backups have no fingerprint: the verify step says it did not check it
    assert "not verified: app-state" in done["steps"]["verify"]
    assert done["steps"]["verify"] != "done"
    # the step's write has its restore record: a rollback of an earlier restore into it sees it
    record = load_restore_record(store, done["restore_ids"]["app-state"])
    assert (record.via, record.status, record.safety_backup_id) == ("full-cluster-restore", "restored", None)


def test_a_component_skipped_as_not_configured_is_restored_by_a_resume_that_configures_it(
    local_store, prod, tmp_path, monkeypatch
):
    """A step whose target was not configured is recorded 'skipped', to be re-evaluated on resume
    (docs/drills.md); but the resume compared the targets with the run's and refused the one now
    configured as 'other targets', so the recovery point's backup of it could never come back
    through that run. Nothing was restored into it: configuring it now is no change of target."""
    monkeypatch.delenv("KLB_APP_STATE_TARGET", raising=False)
    store = local_store()
    target = prod.target()
    original = prod.file.read_bytes()
    backup_all(components=["app-state"], targets={"app-state": target}, store=store)
    prod.file.write_bytes(b"cluster lost\n")

    state = full_cluster_restore(store=store, dry_run=False, return_state=True)  # app-state not configured
    run_id = _run_id(state)
    assert prod.file.read_bytes() == b"cluster lost\n" and prod.restores == 0

    done = full_cluster_restore(targets={"app-state": target}, store=store, dry_run=False, run_id=run_id)
    assert done["steps"]["app-state"] == "done" and prod.file.read_bytes() == original
    assert prod.restores == 1
    # once restored into it, that target is the run's: another one is refused as before
    other = Prod(tmp_path / "other")
    with pytest.raises(BadInput, match="other targets"):
        full_cluster_restore(targets={"app-state": other.target()}, store=store, dry_run=False, run_id=run_id)
    assert other.restores == 0


def _run_id(state) -> str:
    if state.is_completed():
        return state.result()["run_id"]
    return str(state.message).split("run_id='")[1].split("'")[0]


def test_a_full_cluster_restore_that_leaves_out_a_component_of_the_point_fails_naming_it(
    local_store, prod, monkeypatch
):
    """The recovery point holds a backup of a component the run did not restore (its target not
    configured here), or lacks one because it failed when the point was taken: the run ended
    Completed, 'skipped' among its steps, a DR that said it was done with a component still lost."""
    monkeypatch.delenv("KLB_APP_STATE_TARGET", raising=False)
    monkeypatch.delenv("KLB_ETCD_TARGET", raising=False)
    store = local_store()
    target = prod.target()
    backup_all(components=["app-state"], targets={"app-state": target}, store=store)
    prod.file.write_bytes(b"cluster lost\n")

    state = full_cluster_restore(store=store, dry_run=False, return_state=True)  # app-state not configured
    assert state.is_failed() and prod.restores == 0
    with pytest.raises(ComponentFailed, match="(?s)did not restore app-state: .*not configured.*run_id='dr-"):
        state.result()

    taken = backup_all(
        components=["app-state", "etcd"], targets={"app-state": target}, store=store, return_state=True
    )
    assert taken.is_failed()  # etcd was asked for and is not configured: the point lacks it
    rp = list_recovery_points(store)[-1]
    assert set(rp.members) == {"app-state"} and "etcd" in rp.failed
    state = full_cluster_restore(
        recovery_point=rp.id, targets={"app-state": target}, store=store, dry_run=False, return_state=True
    )
    assert state.is_failed() and prod.restores == 1  # what the point holds was restored
    with pytest.raises(ComponentFailed, match=f"(?s)did not restore etcd: failed in recovery point {rp.id}"):
        state.result()


def test_two_resumes_of_one_run_restore_each_step_once(local_store, prod, monkeypatch):
    """Before: each step's record was read before its component lock was taken. Two resumes of
    the same run (the UI's Retry and a person's re-run) both read the app-state step as 'failed',
    both waited for the lock, and both restored it, the second over whatever was written after
    the first. Now one run at a time, and the step record is read and written under the step's
    lock: the second one finds the step done."""
    import threading
    import time
    from contextlib import contextmanager

    import flows.full_cluster_steps as steps
    from flows.locks import component_lock
    from tests.drill.test_approval import Running

    store = local_store()
    target = prod.target()
    original = prod.file.read_bytes()
    backup_all(components=["app-state"], targets={"app-state": target}, store=store)
    prod.file.write_bytes(b"cluster lost\n")
    run_id = _failed_run(store, target, prod)
    at_step = threading.Event()

    @contextmanager
    def watched(component, *args, **kwargs):
        if component == "app-state":
            at_step.set()
        with component_lock(component, *args, **kwargs):
            yield

    monkeypatch.setattr(steps, "component_lock", watched)
    with component_lock("app-state"):  # a backup of app-state running: the resumes wait for it
        resumes = [
            Running(
                flow=full_cluster_restore,
                targets={"app-state": target},
                store=store,
                dry_run=False,
                run_id=run_id,
            )
            for _ in range(2)
        ]
        assert at_step.wait(120)
        time.sleep(5)  # room for the other resume to get as far as it can
    results = sorted((r.wait().result()["steps"]["app-state"] for r in resumes), key=len)
    assert results == ["done", "done (earlier run)"]
    assert prod.restores == 1 and prod.file.read_bytes() == original


def test_a_second_full_cluster_restore_waits_for_the_one_running(local_store, prod, monkeypatch):
    """Before: each step held only its own component's lock, so two runs (from two recovery
    points, or two new runs of one) interleaved step by step and left the cluster a mix of both.
    One run at a time now: while `klb-full-cluster-restore` is held (another run), a run waits,
    and one that gives up (its wait ran out) changes nothing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    from tasks.errors import TransientError

    store = local_store()
    target = prod.target()
    backup_all(components=["app-state"], targets={"app-state": target}, store=store)
    prod.file.write_bytes(b"cluster lost\n")
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name="klb-full-cluster-restore", limit=1)
        )
    monkeypatch.setenv("KLB_COMPONENT_LOCK_WAIT_SECONDS", "3")
    with concurrency("klb-full-cluster-restore", occupy=1, strict=True):  # another run, mid-way
        state = full_cluster_restore(
            targets={"app-state": target}, store=store, dry_run=False, return_state=True
        )
    assert state.is_failed()
    with pytest.raises(TransientError, match="another full cluster restore held klb-full-cluster-restore"):
        state.result()
    assert prod.restores == 0 and prod.file.read_bytes() == b"cluster lost\n"
