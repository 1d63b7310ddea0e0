"""A rollback puts back what the safety backup holds; what the restore created (an object, a
namespace, a database that was not there before) is not in it, and the rollback leaves it. The
rollback's record lists it, so that is never silent. Emulated Kubernetes API with Velero."""

from __future__ import annotations

import pytest


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


def test_a_rollback_of_a_named_restore_puts_back_the_names_that_existed_and_lists_the_others(
    prefect_server, kube_api, ctl, local_store
):
    """A names restore brought back `settings` (changed since) and `flags` (deleted since). Its
    rollback asked for both names from the safety backup, which does not hold `flags`: the
    rollback failed, after its own safety backup, with `settings` not put back. It now puts back
    `settings` and lists `flags`; a rollback with no name the safety backup holds is refused
    before its checklist."""
    from flows.backup import backup_component
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
    from tasks.errors import BadInput
    from tasks.storage.backends import backend_for
    from tests.k8s_helpers import configmap, k8s, seed_namespaces, seed_settings, set_configmap

    store = local_store()
    (ns,) = seed_namespaces(ctl, "named", seed=seed_settings)
    target = kube_api.velero_target(include_namespaces=[ns])
    core = k8s(kube_api).core
    core.create_namespaced_config_map(ns, {"metadata": {"name": "flags"}, "data": {"beta": "on"}})
    backup = backup_component("kubernetes", target=target, store=store)
    core.delete_namespaced_config_map("flags", ns)
    set_configmap(kube_api, ns, "settings", {"m": "2"})
    both = {"namespaces": [ns], "resources": ["configmaps"], "existing_resource_policy": "update"}

    named = {**both, "names": ["settings", "flags"]}
    record = restore_with_checklist(
        "kubernetes", backup_id=backup.id, target=target, store=store, options=named
    )
    assert configmap(kube_api, ns, "settings") == {"m": "1"}
    assert configmap(kube_api, ns, "flags") == {"beta": "on"}
    rolled = rollback_restore(record.id, target=target, store=store)
    rollback = load_restore_record(store, rolled.rolled_back_by)
    assert rollback.status == "restored" and rollback.options["names"] == ["settings"]
    assert configmap(kube_api, ns, "settings") == {"m": "2"}
    assert rollback.left_in_place == [f"{ns}/configmaps/flags"]

    core.delete_namespaced_config_map("flags", ns)
    only_new = restore_with_checklist(
        "kubernetes", backup_id=backup.id, target=target, store=store, options={**both, "names": ["flags"]}
    )
    before = sorted(backend_for(store).list_keys(store.prefix))
    with pytest.raises(BadInput, match=r"overwrote nothing .* only created \['[^']*/configmaps/flags'\]"):
        rollback_restore(only_new.id, target=target, store=store)
    assert sorted(backend_for(store).list_keys(store.prefix)) == before


def test_what_a_restore_merged_into_a_service_account_is_recorded_and_never_said_undone(
    prefect_server, kube_api, ctl, local_store
):
    """Velero merges a ServiceAccount that exists (whatever the policy) by a patch without its
    restore label: a restore that only merged the backup's pull secret into `default` was
    recorded as 'nothing restored' and its rollback said there was nothing to undo. It is
    'restored' now; its rollback is refused (a merge only adds: Velero cannot take it away),
    saying what to remove by hand; with other objects overwritten, those are put back and the
    merge is listed as left."""
    from flows.backup import backup_component
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
    from sandbox.k8s_emulator.store import BY_PATH
    from tasks.errors import BadInput
    from tests.k8s_helpers import configmap, seed_namespaces, seed_settings, set_configmap

    accounts = BY_PATH[("v1", "serviceaccounts")]
    store = local_store()
    (ns,) = seed_namespaces(ctl, "merge", seed=seed_settings)
    target = kube_api.velero_target(include_namespaces=[ns])
    ctl.store.patch(accounts, ns, "default", {"imagePullSecrets": [{"name": "regcred"}]})
    backup_component("kubernetes", target=target, store=store)
    ctl.store.patch(accounts, ns, "default", {"imagePullSecrets": None})

    record = restore_with_checklist("kubernetes", target=target, store=store)
    assert record.status == "restored" and record.target_changed
    merged = rf"{ns}/serviceaccounts/default: imagePullSecrets \['regcred'\]"
    with pytest.raises(BadInput, match=rf"{merged}.*by hand"):
        rollback_restore(record.id, target=target, store=store)
    assert load_restore_record(store, record.id).status == "restored"
    assert ctl.store.get(accounts, ns, "default")["imagePullSecrets"] == [{"name": "regcred"}]

    ctl.store.patch(accounts, ns, "default", {"imagePullSecrets": None})
    set_configmap(kube_api, ns, "settings", {"m": "2"})
    update = {"existing_resource_policy": "update"}
    record = restore_with_checklist("kubernetes", target=target, store=store, options=update)
    assert configmap(kube_api, ns, "settings") == {"m": "1"}
    rolled = rollback_restore(record.id, target=target, store=store)
    assert configmap(kube_api, ns, "settings") == {"m": "2"}
    left = load_restore_record(store, rolled.rolled_back_by).left_in_place
    assert [x for x in left if x.startswith(f"{ns}/serviceaccounts/default: imagePullSecrets")] == left
