"""What a real cluster puts in every new namespace, within moments: the ServiceAccount `default`
and the ConfigMap `kube-root-ca.crt` (the emulator makes both, sandbox/k8s_emulator/controllers.py).
Velero backs them up; in a namespace a restore or a drill makes, the cluster's are there before
Velero's copies (which it skips). They are the cluster's (kube.CLUSTER_MANAGED): never expected,
counted, "missing" nor "already existed" for the operator to delete. Before, every restore into an
existing namespace told the operator kube-root-ca.crt "already existed" and to delete it first."""

from __future__ import annotations

import copy
import secrets

from sandbox.k8s_emulator.snapshot import CONFIGMAPS
from sandbox.k8s_emulator.store import BY_PATH
from tasks.components import kubernetes as velero
from tests.k8s_helpers import k8s, seed_namespaces, seed_settings
from tests.test_velero_roundtrip import delete_namespace, take_backup

ACCOUNTS = BY_PATH[("v1", "serviceaccounts")]
CLUSTERS = {"configmaps": ["kube-root-ca.crt"], "serviceaccounts": ["default"]}


def seed_app(ctl, ns: str) -> None:
    seed_settings(ctl, ns)
    ctl.seed("v1", "serviceaccounts", ns, {"metadata": {"name": "runner"}})


def names(kube_api, ns: str, plural: str) -> list[str]:
    return velero.api.list_names(k8s(kube_api), ns, plural)


def test_restore_into_a_fresh_namespace_and_a_drill_verify_with_the_clusters_own_objects(
    kube_api, ctl, local_store
):
    store = local_store()
    (ns,) = seed_namespaces(ctl, "own", seed=seed_app)
    target, manifest = take_backup(kube_api, store, ns)
    held = velero.load_document(store, manifest)["inventory"][ns]
    assert held["configmaps"] == ["settings"] and held["serviceaccounts"] == ["runner"]
    described = velero.describe_current_state(target)["namespaces"][ns]["counts"]
    assert described["configmaps"] == 1 and described["serviceaccounts"] == 1

    # the namespace is gone: the restore makes it, and the cluster fills it before Velero does
    delete_namespace(ctl, ns)
    report = velero.restore(target, manifest, store, velero.RestoreOptions())
    assert report["phase"] == "Completed" and report["warnings"] == 0
    assert report["verified_objects"] == 2 and report["already_existed"] == [] and "note" not in report
    assert names(kube_api, ns, "configmaps") == ["kube-root-ca.crt", "settings"]
    assert names(kube_api, ns, "serviceaccounts") == ["default", "runner"]

    # aside, into a namespace that does not exist: the precheck lets it through, the copy verifies
    aside = f"aside-{secrets.token_hex(3)}"
    mapped = velero.restore(target, manifest, store, velero.RestoreOptions(namespace_mapping={ns: aside}))
    assert mapped["phase"] == "Completed" and mapped["already_existed"] == [] and "note" not in mapped
    assert names(kube_api, aside, "configmaps") == ["kube-root-ca.crt", "settings"]

    drilled = velero.drill(target, manifest, store, f"own{secrets.token_hex(2)}")
    assert drilled["verified"] is True
    assert drilled["checks"][f"{ns}/configmaps"] == {"expected": 1, "restored": 1}
    assert drilled["checks"][f"{ns}/serviceaccounts"] == {"expected": 1, "restored": 1}


def test_a_restore_into_the_existing_namespace_does_not_ask_to_delete_the_clusters_objects(
    kube_api, ctl, local_store
):
    """The namespace is there (the app's objects lost, the cluster's kept): with policy none the
    report lists only the backup's objects that were there, and no kube-root-ca.crt to delete."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "keep", seed=seed_app)
    target, manifest = take_backup(kube_api, store, ns)
    ctl.store.delete(ACCOUNTS, ns, "runner")

    report = velero.restore(target, manifest, store, velero.RestoreOptions())

    assert report["phase"] == "Completed" and report["verified_objects"] == 2
    assert report["already_existed"] == [f"{ns}/configmaps/settings"]
    assert names(kube_api, ns, "serviceaccounts") == ["default", "runner"]


def test_an_older_inventory_that_lists_them_neither_alarms_nor_counts_them(kube_api, ctl, local_store):
    """A backup recorded before kube.CLUSTER_MANAGED has them in its inventory: a restore into the
    existing namespace does not report them as already there, nor counts them as verified."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "old", seed=seed_app)
    target, manifest = take_backup(kube_api, store, ns)
    doc = copy.deepcopy(velero.load_document(store, manifest))
    for plural, objs in CLUSTERS.items():
        doc["inventory"][ns][plural] = sorted(doc["inventory"][ns][plural] + objs)
    ctl.store.delete(CONFIGMAPS, ns, "settings")

    report = velero.restore_document(target, doc, velero.RestoreOptions(), manifest.id)

    assert report["phase"] == "Completed" and report["verified_objects"] == 2
    assert report["already_existed"] == [] and "note" not in report
