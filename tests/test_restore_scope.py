"""'latest' is the newest backup that covers the scope asked for: a newer backup taken by a
narrower target (one namespace, one database) is never what a restore, a plan, a Kubernetes PITR
or a drill of the whole component uses; with nothing that covers it, NotFound names the
candidates and nothing changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tasks.errors import NotFound


def test_latest_of_the_whole_kubernetes_target_skips_a_newer_one_namespace_backup(
    prefect_server, kube_api, ctl, local_store
):
    from flows.backup import backup_component
    from flows.pitr import pitr_kubernetes
    from flows.recovery import restore_plan
    from flows.restore import restore_component
    from tests.k8s_helpers import configmap, seed_namespaces, seed_settings, set_configmap

    store = local_store()
    a, b = seed_namespaces(ctl, "scope-a", "scope-b", seed=seed_settings)
    whole = kube_api.velero_target(include_namespaces=[a, b])
    narrow = kube_api.velero_target(include_namespaces=[a])
    full = backup_component("kubernetes", target=whole, store=store)
    one = backup_component("kubernetes", target=narrow, store=store)  # newer, one namespace only

    plan = restore_plan(
        backup_id="latest", components=["kubernetes"], targets={"kubernetes": whole}, store=store
    )
    assert plan["steps"][0]["backup_id"] == full.id
    assert pitr_kubernetes(datetime.now(UTC), target=whole, store=store, dry_run=True)["backup_id"] == full.id

    set_configmap(kube_api, b, "settings", {"m": "broken"})
    report = restore_component(
        "kubernetes", "latest", target=whole, store=store, options={"existing_resource_policy": "update"}
    )
    assert report["backup_id"] == full.id
    assert configmap(kube_api, b, "settings") == {"m": "1"}  # the namespace the narrow backup lacks
    # a restore that asks for that one namespace may use the newer backup that holds it
    report = restore_component("kubernetes", "latest", target=whole, store=store, options={"namespaces": [a]})
    assert report["backup_id"] == one.id


def test_with_only_narrower_backups_latest_is_refused_naming_them(prefect_server, kube_api, ctl, local_store):
    from flows.backup import backup_component
    from flows.restore import restore_component
    from tests.k8s_helpers import configmap, seed_namespaces, seed_settings, set_configmap

    store = local_store()
    a, b = seed_namespaces(ctl, "only-a", "only-b", seed=seed_settings)
    one = backup_component("kubernetes", target=kube_api.velero_target(include_namespaces=[a]), store=store)
    set_configmap(kube_api, a, "settings", {"m": "now"})
    whole = kube_api.velero_target(include_namespaces=[a, b])
    with pytest.raises(NotFound) as err:
        restore_component(
            "kubernetes", "latest", target=whole, store=store, options={"existing_resource_policy": "update"}
        )
    assert one.id in str(err.value) and b in str(err.value) and "by id" in str(err.value)
    assert configmap(kube_api, a, "settings") == {"m": "now"}  # nothing was restored


def test_latest_of_every_database_skips_a_newer_one_database_backup(prefect_server, postgres, local_store):
    from flows.backup import backup_component
    from flows.drill import restore_drill
    from flows.recovery import restore_plan
    from flows.restore import restore_component
    from tests.pg_helpers import exec_in, make_db, new_name, scalar, target_for

    store = local_store()
    x, y = new_name("scx"), new_name("scy")
    make_db(target_for(postgres), x, rows=20)
    make_db(target_for(postgres), y, rows=20)
    every = target_for(postgres)  # databases=[]: every database of the server
    full = backup_component("postgres", target=every, store=store)
    one = backup_component("postgres", target=target_for(postgres, databases=[x]), store=store)

    plan = restore_plan(backup_id="latest", components=["postgres"], targets={"postgres": every}, store=store)
    assert plan["steps"][0]["backup_id"] == full.id
    record = restore_drill(components=["postgres"], targets={"postgres": every}, store=store)
    assert [c.backup_id for c in record.components if c.component == "postgres"] == [full.id]

    exec_in(every, y, "DELETE FROM public.logs")
    report = restore_component("postgres", "latest", target=every, store=store, options={"databases": [y]})
    assert report["backup_id"] == full.id  # the newer backup has no database y
    assert scalar(every, y, "SELECT count(*) FROM public.logs") == 20
    with pytest.raises(NotFound) as err:  # a target of its own databases: only the narrow one is newer
        restore_component(
            "postgres", "latest", target=target_for(postgres, databases=[x, "nope"]), store=store
        )
    assert one.id in str(err.value) and full.id in str(err.value)


def _app_state(tmp_path, *names: str):
    from blocks.app_state import AppStateStep, AppStateTarget

    steps = []
    for name in names:
        path = tmp_path / name
        if not path.exists():
            path.write_text(f"{name} v1\n")
        steps.append(
            AppStateStep(
                name=name,
                backup_command=["cat", str(path)],
                restore_command=["sh", "-c", 'cat > "$F"'],
                env={"F": str(path)},
                drill_restore_command=["sh", "-c", 'cat > "$KLB_DRILL_DIR/state"'],
            )
        )
    return AppStateTarget(steps=steps)


def test_latest_recovery_point_and_drill_skip_a_newer_point_of_narrower_targets(
    prefect_server, local_store, tmp_path
):
    from flows.backup import backup_all
    from flows.drill import restore_drill
    from flows.restore import restore_component
    from flows.scenarios import full_cluster_restore

    store = local_store()
    whole, narrow = _app_state(tmp_path, "a", "b"), _app_state(tmp_path, "a")
    full = backup_all(components=["app-state"], targets={"app-state": whole}, store=store)
    backup_all(components=["app-state"], targets={"app-state": narrow}, store=store)  # newer, step a only

    dry = full_cluster_restore(targets={"app-state": whole}, store=store)
    assert dry["recovery_point"] == full.recovery_point
    record = restore_drill(recovery_point="latest", targets={"app-state": whole}, store=store)
    assert record.recovery_point == full.recovery_point
    assert record.component("app-state").backup_id == full.backups["app-state"].id

    (tmp_path / "b").write_text("b lost\n")
    report = restore_component("app-state", target=whole, store=store)
    assert report["backup_id"] == full.backups["app-state"].id
    assert (tmp_path / "b").read_text() == "b v1\n"
