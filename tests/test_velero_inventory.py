"""ServiceAccounts, Roles and RoleBindings: Velero backs them up with the namespace, our inventory
lists them, and a restore or a drill that does not bring one back fails. Until they were in the
inventory, a restore that silently dropped a RoleBinding (the application then refused by RBAC)
passed as verified."""

from __future__ import annotations

import secrets

import pytest

from sandbox.k8s_emulator.snapshot import CONFIGMAPS
from sandbox.k8s_emulator.store import BY_PATH
from tasks.components import kubernetes as velero
from tasks.errors import BadInput, IntegrityError
from tests.k8s_helpers import seed_namespaces, seed_settings
from tests.test_velero_roundtrip import delete_namespace, take_backup

RBAC = "rbac.authorization.k8s.io/v1"
ACCOUNTS = BY_PATH[("v1", "serviceaccounts")]


def seed_accounts(ctl, ns: str) -> None:
    """A namespace (with the `default` ServiceAccount the emulated kube-controller-manager makes
    in every namespace), an application account, a Role and the RoleBinding that grants it."""
    seed_settings(ctl, ns)
    ctl.seed("v1", "serviceaccounts", ns, {"metadata": {"name": "runner"}})
    rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}
    ctl.seed(RBAC, "roles", ns, {"metadata": {"name": "read"}, "rules": [rule]})
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read"}
    subject = {"kind": "ServiceAccount", "name": "runner", "namespace": ns}
    ctl.seed(RBAC, "rolebindings", ns, {"metadata": {"name": "read"}, "roleRef": ref, "subjects": [subject]})


def lose_in_velero(ctl, store, manifest, plural: str, ns: str, name: str) -> None:
    """What Velero restores of this backup lacks the object (as a plugin or a fault that drops an
    item without an error would): its copy in the emulated object storage goes."""
    snap = ctl.snapshots[velero.load_document(store, manifest)["backup"]["metadata"]["name"]]
    snap.items = [
        (r, o)
        for r, o in snap.items
        if not (r.plural == plural and o["metadata"].get("namespace") == ns and o["metadata"]["name"] == name)
    ]


def test_the_inventory_holds_service_accounts_roles_and_role_bindings(kube_api, ctl, local_store):
    store = local_store()
    (ns,) = seed_namespaces(ctl, "acct", seed=seed_accounts)
    _, manifest = take_backup(kube_api, store, ns)
    held = velero.load_document(store, manifest)["inventory"][ns]
    # `default` is the cluster's (made in every namespace, there before any restore): not ours
    assert held["serviceaccounts"] == ["runner"]
    assert held["roles"] == ["read"] and held["rolebindings"] == ["read"]


@pytest.mark.parametrize("plural", ["rolebindings", "roles", "serviceaccounts"])
def test_a_restore_that_drops_one_fails_naming_it(kube_api, ctl, local_store, plural):
    store = local_store()
    (ns,) = seed_namespaces(ctl, "drop", seed=seed_accounts)
    target, manifest = take_backup(kube_api, store, ns)
    name = "runner" if plural == "serviceaccounts" else "read"
    lose_in_velero(ctl, store, manifest, plural, ns, name)
    delete_namespace(ctl, ns)

    with pytest.raises(IntegrityError, match=f"{ns}/{plural}/{name}"):
        velero.restore(target, manifest, store, velero.RestoreOptions())


def test_a_drill_that_lacks_a_role_binding_fails(kube_api, ctl, local_store):
    store = local_store()
    (ns,) = seed_namespaces(ctl, "drilldrop", seed=seed_accounts)
    target, manifest = take_backup(kube_api, store, ns)
    lose_in_velero(ctl, store, manifest, "rolebindings", ns, "read")

    with pytest.raises(IntegrityError, match=r"rolebindings lacks \['read'\]"):
        velero.drill(target, manifest, store, f"d{secrets.token_hex(2)}")


def test_service_accounts_already_there_are_not_reported_as_left_as_they_were(kube_api, ctl, local_store):
    """The `default` ServiceAccount is in every namespace: a restore into the namespace finds it
    there. Velero merges a ServiceAccount that exists (restore.go: mergeServiceAccounts, then a
    patch, whatever existingResourcePolicy says), so it is not an object 'left as it is' that
    the operator should delete and restore again."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "keep", seed=seed_accounts)
    target, manifest = take_backup(kube_api, store, ns)
    ctl.store.delete(CONFIGMAPS, ns, "settings")
    ctl.store.delete(ACCOUNTS, ns, "runner")

    report = velero.restore(target, manifest, store, velero.RestoreOptions())

    # settings, runner, the Role and the RoleBinding: `default` and kube-root-ca.crt are the cluster's
    assert report["phase"] == "Completed" and report["verified_objects"] == 4
    assert {o["metadata"]["name"] for o in ctl.store.list(ACCOUNTS, ns)} == {"default", "runner"}
    assert report["already_existed"] == [f"{ns}/rolebindings/read", f"{ns}/roles/read"]


def test_a_restore_by_name_of_a_role_binding_says_to_restore_the_namespace(kube_api, ctl, local_store):
    """A restore by name copies objects into place with the flow-run account, which may not write
    RBAC objects: it refuses, before Velero restores anything, and says what to do instead."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "byname", seed=seed_accounts)
    target, manifest = take_backup(kube_api, store, ns)
    restores = len(ctl.store.list(BY_PATH[("velero.io/v1", "restores")]))

    with pytest.raises(BadInput, match=f"{ns}/rolebindings/read.*restore their namespace"):
        velero.restore(
            target, manifest, store, velero.RestoreOptions(names=["read"], resources=["rolebindings"])
        )
    assert len(ctl.store.list(BY_PATH[("velero.io/v1", "restores")])) == restores
