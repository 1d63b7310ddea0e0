"""A backup of kubernetes or volumes never captures what a running restore or DR scenario made on
purpose (apps scaled to zero, claims or a namespace deleted, claims restored empty), and so never
becomes `latest` from it: the two components share one lock (flows/locks.py)."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

import pytest

from flows.backup import backup_component
from flows.locks import component_lock, lock_name
from tasks.errors import TransientError
from tasks.storage.catalog import get_backup
from tests.k8s_helpers import seed_namespaces


class InThread:
    """`fn()` in a thread of its own, as another run would be (its result or its exception)."""

    def __init__(self, fn):
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def wait(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result


WAITED = "another backup/restore of kubernetes or volumes held klb-component-kubernetes"


def another_run_takes(component: str) -> str:
    """What another run (a backup of `component`) gets now: the lock, or the error of its wait."""

    def take() -> str:
        with component_lock(component, timeout_seconds=1):
            return f"the {component} lock was free"

    try:
        return InThread(take).wait()
    except TransientError as exc:
        return str(exc)


@contextmanager
def lock_waits_logged():
    """An event set when a run logs that it waits for a component lock."""
    waiting = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("waiting for lock klb-component-"):
                waiting.set()

    handler, logger = Seen(), logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    try:
        yield waiting
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize(("holder", "other"), [("kubernetes", "volumes"), ("volumes", "kubernetes")])
def test_kubernetes_and_volumes_take_one_lock(prefect_server, holder, other):
    """namespace_corruption holds the kubernetes lock while it deletes a namespace with its claims
    (a volumes backup then held none of them); data_corruption holds the volumes lock while the
    apps are at zero. Before, these were two locks and the other backup ran in between."""
    assert lock_name(holder) == lock_name(other)
    with component_lock(holder, timeout_seconds=30):
        other_run = InThread(lambda: component_lock(other, timeout_seconds=1).__enter__())
        with pytest.raises(TransientError, match="another backup/restore of kubernetes or volumes"):
            other_run.wait()


def test_a_kubernetes_backup_started_while_data_corruption_holds_the_apps_at_zero_waits_for_them(
    prefect_server, kube_api, ctl, local_store, monkeypatch
):
    """data_corruption scales the namespace's apps to zero and deletes its claims holding only the
    volumes lock: a scheduled kubernetes backup in that time captured Deployments with 0 replicas,
    verified and became `latest` (a later restore of `latest` brought the apps back at zero). Now
    it waits for the scenario to end, says so in its log, then captures the apps as they are."""
    import flows.scenarios as scenarios
    from flows.scenarios import data_corruption
    from tasks.components.kubernetes import api as kube
    from tests.k8s_helpers import k8s

    (ns,) = seed_namespaces(ctl, "lambda")
    target, store = kube_api.velero_target(include_namespaces=[ns]), local_store()
    backup_component("volumes", target=target, store=store)
    ctl.volumes[(ns, "data")] = "corrupted"
    real_quiesced, started = scenarios.quiesced, []

    @contextmanager
    def quiesced_then_a_backup(kube_target, namespace):
        with real_quiesced(kube_target, namespace) as replicas:
            at_zero = {d.metadata.name: d.spec.replicas for d in kube.list_deployments(k8s(kube_api), ns)}
            assert at_zero == {"api": 0, "worker": 0, "cron": 0}
            started.append(InThread(lambda: backup_component("kubernetes", target=target, store=store)))
            # the scenario goes on once the backup waits for the lock (or, before, had ended)
            while started[0].thread.is_alive() and not waiting.wait(0.1):
                pass
            yield replicas

    monkeypatch.setattr(scenarios, "quiesced", quiesced_then_a_backup)
    with lock_waits_logged() as waiting:
        data_corruption(ns, target=target, store=store)
        backup = started[0].wait()
    velero_name = get_backup(store, backup.id).engine["velero_backup"]
    captured = {
        obj["metadata"]["name"]: obj["spec"]["replicas"]
        for res, obj in ctl.snapshots[velero_name].items
        if res.plural == "deployments" and obj["metadata"]["namespace"] == ns
    }
    assert captured == {"api": 2, "worker": 5, "cron": 1}  # before: all 0
    assert waiting.is_set()  # its log said it waited, and for which lock


def test_no_volumes_backup_between_the_kubernetes_and_volumes_steps_of_a_full_cluster_restore(
    prefect_server, kube_api, ctl, local_store, monkeypatch
):
    """The kubernetes step restores the claims (empty, or with the kubernetes backup's data) and
    the volumes step then replaces them with the volumes backup's data; each step took its lock
    only for itself, so a volumes backup between the two captured the empty claims, verified and
    became `latest`. The run holds the lock from its first step to its last now."""
    import flows.full_cluster_steps as steps
    from flows.backup import backup_all
    from flows.scenarios import full_cluster_restore
    from tasks.components.kubernetes import api as kube
    from tests.k8s_helpers import k8s

    (ns,) = seed_namespaces(ctl, "vol")
    target, store = kube_api.velero_target(include_namespaces=[ns]), local_store()
    targets = {"kubernetes": target, "volumes": target}
    backup_all(components=["kubernetes", "volumes"], targets=targets, store=store)
    kube.delete_namespace(k8s(kube_api), ns, interval=0.01)  # the cluster is lost
    real_step_key, between = steps.step_key, []

    def step_key(store_block, run_id, index, step):
        if step == "volumes":  # the kubernetes step is done, the volumes step not begun
            between.append(another_run_takes("volumes"))  # a scheduled volumes backup
        return real_step_key(store_block, run_id, index, step)

    monkeypatch.setattr(steps, "step_key", step_key)
    result = full_cluster_restore(targets=targets, store=store, dry_run=False)
    assert result["steps"]["volumes"] == "done"
    assert len(between) == 1 and WAITED in between[0]


def test_a_postgres_restore_that_scales_the_apps_to_zero_keeps_kubernetes_backups_out(
    prefect_server, postgres, kube_api, local_store, monkeypatch
):
    """restore_component("postgres", options={"quiesce_namespace": ...}) scales the namespace's
    apps to zero around the restore holding only the postgres lock: a kubernetes backup in that
    window captured Deployments at 0 replicas. It holds the Kubernetes lock too now (taken first)."""
    import secrets

    import tasks.components.kubernetes.quiesce as quiesce
    import tasks.components.postgres as pg
    from flows.restore import restore_component
    from tasks.storage.session import backup_session
    from tests.pg_helpers import db_names, drop, make_db, new_name, target_for

    name = new_name()
    admin = target_for(postgres)
    make_db(admin, name)
    target, store = target_for(postgres, databases=[name]), local_store()
    with backup_session(store, "postgres") as session:
        pg.backup(target, session)
        session.commit()
    ns, block = "lambda-" + secrets.token_hex(3), "kube-" + secrets.token_hex(3)
    kube_api.controller.seed_namespace(ns)
    kube_api.controller.seed_deployment(ns, "api", 2)
    kube_api.target().save(block)
    real_quiesced, in_window = quiesce.quiesced, []

    @contextmanager
    def quiesced(kube_target, namespace, *args, **kwargs):
        with real_quiesced(kube_target, namespace, *args, **kwargs) as replicas:
            in_window.append(another_run_takes("kubernetes"))  # a scheduled kubernetes backup
            yield replicas

    monkeypatch.setattr(quiesce, "quiesced", quiesced)
    try:
        restore_component(
            "postgres",
            backup_id=session.manifest.id,
            target=target,
            store=store,
            options={"quiesce_namespace": ns, "kube_block": block},
        )
    finally:
        drop(admin, *[d for d in db_names(admin) if d == name or d.startswith(name + "__")])
    assert len(in_window) == 1 and WAITED in in_window[0]


def test_a_kubernetes_drill_keeps_backups_out_of_its_drill_namespaces(
    prefect_server, kube_api, ctl, local_store, monkeypatch
):
    """The drill restores a kubernetes backup into `restore-drill-*` namespaces of the live
    cluster with the apps at 0 replicas, taking no lock: a kubernetes or volumes backup of every
    namespace in that time kept the drill's copy. The drill of kubernetes or volumes holds their
    lock now."""
    import tasks.components.kubernetes as velero
    from flows.drill import restore_drill

    (ns,) = seed_namespaces(ctl, "lambda")
    target, store = kube_api.velero_target(include_namespaces=[ns]), local_store()
    backup_component("kubernetes", target=target, store=store)
    real_drill, in_drill = velero.drill, []

    def drill(*args, **kwargs):
        in_drill.append(another_run_takes("volumes"))  # a scheduled volumes backup
        return real_drill(*args, **kwargs)

    monkeypatch.setattr(velero, "drill", drill)
    restore_drill(components=["kubernetes"], targets={"kubernetes": target}, store=store)
    assert len(in_drill) == 1 and WAITED in in_drill[0]
