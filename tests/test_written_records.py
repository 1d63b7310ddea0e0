"""Writes outside the checklist into the target of an earlier checklist restore: a DR scenario on
the Kubernetes emulator, rollback_postgres on PostgreSQL. Each leaves a restore record, so the
rollback of the earlier restore is refused naming it, instead of putting its safety backup back
over the later write (the app-state case: tests/drill/test_rollback_after_outside_writes.py)."""

from __future__ import annotations

import pytest

from flows.backup import backup_component
from flows.postgres import rollback_postgres
from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
from flows.scenarios import namespace_corruption
from tasks.components.postgres.common import parse_aside
from tasks.errors import BadInput
from tasks.operations.plan import restore_history
from tests.k8s_helpers import configmap, seed_namespaces, seed_settings, set_configmap
from tests.pg_helpers import db_names, drop, exec_in, make_db, new_name, state, target_for

pytestmark = pytest.mark.usefixtures("prefect_server")


def _refused(state, later: str, component: str, earlier: str, via: str) -> None:
    with pytest.raises(BadInput) as refused:
        state.result()
    message = str(refused.value)
    assert f"{later} restored {component} into the same target after {earlier}" in message
    assert f"{later} ({via}) ran outside the checklist" in message


def test_a_namespace_corruption_after_a_checklist_restore_blocks_its_rollback(kube_api, ctl, local_store):
    """Before: namespace_corruption wrote no record; rolling back the checklist restore before it
    put that restore's safety backup (the broken settings) over the namespace it recovered."""
    (lam,) = seed_namespaces(ctl, "lambda", seed=seed_settings)
    target = kube_api.velero_target(include_namespaces=[lam])
    store = local_store()
    backup_component("kubernetes", target=target, store=store)
    set_configmap(kube_api, lam, "settings", {"m": "broken"})
    options = {"namespaces": [lam], "existing_resource_policy": "update"}
    a = restore_with_checklist("kubernetes", target=target, store=store, options=options)
    set_configmap(kube_api, lam, "settings", {"m": "corrupted"})
    b = namespace_corruption(lam, target=target, store=store)
    assert configmap(kube_api, lam, "settings") == {"m": "1"}

    state = rollback_restore(a.id, target=target, store=store, return_state=True)

    assert state.is_failed(), "the rollback of A undid namespace_corruption's restore"
    _refused(state, b["restore_id"], "kubernetes", a.id, "namespace-corruption")
    assert configmap(kube_api, lam, "settings") == {"m": "1"}  # B's restore, not A's safety copy
    written = load_restore_record(store, b["restore_id"])
    assert (written.via, written.status, written.target_changed) == ("namespace-corruption", "restored", True)


def test_a_rollback_postgres_after_a_checklist_restore_blocks_its_rollback(postgres, local_store):
    """Before: rollback_postgres wrote no record; rolling back the checklist restore before it put
    that restore's safety backup over the database rollback_postgres had swapped back in."""
    db = new_name()
    admin_target = target_for(postgres)
    make_db(admin_target, db)
    target = target_for(postgres, databases=[db])
    store = local_store()
    try:
        backup_component("postgres", target=target, store=store)
        exec_in(target, db, "DELETE FROM app.items WHERE id > 10")
        a = restore_with_checklist("postgres", target=target, store=store, options={"databases": [db]})
        b = rollback_postgres(db, target=target, store=store)  # the database from before A, swapped in
        exec_in(target, db, "DELETE FROM app.items WHERE id > 5")
        in_place = state(target, db)

        refused = rollback_restore(a.id, target=target, store=store, return_state=True)

        assert refused.is_failed(), "the rollback of A undid rollback_postgres"
        _refused(refused, b["restore_id"], "postgres", a.id, "rollback-postgres")
        assert state(target, db) == in_place
        written = load_restore_record(store, b["restore_id"])
        assert written.backup_id == b["restored_from"] and written.target_changed is True
        # A's load is a sample of how long a postgres restore takes; B's swap (a rename) is not
        assert len(restore_history(store)["postgres"]) == 1
    finally:
        kept = [d for d in db_names(admin_target) if (p := parse_aside(d)) and p[0] == db]
        drop(admin_target, db, *kept)
