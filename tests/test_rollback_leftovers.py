"""A rollback puts back what the safety backup holds; what the restore created (an object, a
namespace, a database that was not there before) is not in it, and the rollback leaves it. The
rollback's record lists it, so that is never silent. Emulated Kubernetes API with Velero."""

from __future__ import annotations


def test_a_rollback_lists_the_objects_the_restore_created_that_it_leaves(
    prefect_server, kube_api, ctl, local_store
):
    from flows.backup import backup_component
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
    from tests.k8s_helpers import configmap, k8s, seed_namespaces, seed_settings, set_configmap

    store = local_store()
    (ns,) = seed_namespaces(ctl, "left", seed=seed_settings)
    target = kube_api.velero_target(include_namespaces=[ns])
    k8s(kube_api).core.create_namespaced_config_map(
        ns, {"metadata": {"name": "flags"}, "data": {"beta": "on"}}
    )
    backup_component("kubernetes", target=target, store=store)
    k8s(kube_api).core.delete_namespaced_config_map("flags", ns)  # gone since the backup
    set_configmap(kube_api, ns, "settings", {"m": "2"})

    record = restore_with_checklist(
        "kubernetes", target=target, store=store, options={"existing_resource_policy": "update"}
    )
    assert configmap(kube_api, ns, "flags") == {"beta": "on"}  # created by the restore
    rolled = rollback_restore(record.id, target=target, store=store)

    rollback = load_restore_record(store, rolled.rolled_back_by)
    assert configmap(kube_api, ns, "settings") == {"m": "2"}  # overwritten back
    assert configmap(kube_api, ns, "flags") == {"beta": "on"}  # left: not in the safety backup
    assert rollback.left_in_place == [f"{ns}/configmaps/flags"]


def test_nothing_created_nothing_listed(prefect_server, kube_api, ctl, local_store):
    from flows.backup import backup_component
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
    from tests.k8s_helpers import seed_namespaces, seed_settings, set_configmap

    store = local_store()
    (ns,) = seed_namespaces(ctl, "same", seed=seed_settings)
    target = kube_api.velero_target(include_namespaces=[ns])
    backup_component("kubernetes", target=target, store=store)
    set_configmap(kube_api, ns, "settings", {"m": "2"})
    record = restore_with_checklist(
        "kubernetes", target=target, store=store, options={"existing_resource_policy": "update"}
    )
    rolled = rollback_restore(record.id, target=target, store=store)
    assert load_restore_record(store, rolled.rolled_back_by).left_in_place == []
