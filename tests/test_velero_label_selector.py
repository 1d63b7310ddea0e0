"""A restore with a label_selector verified nothing: the inventory holds names only, so which
objects the selector picks was unknown, and a restore Velero completed without one of them said
`restored`. The labels of the backed-up objects are recorded with the inventory, and the objects
the selector picks must come back."""

from __future__ import annotations

import secrets

import pytest

from sandbox.k8s_emulator.snapshot import CONFIGMAPS
from sandbox.k8s_emulator.store import CRDS
from tasks.components import kubernetes as velero
from tasks.errors import IntegrityError
from tests.k8s_helpers import install_knative_crd, seed_knative_service
from tests.test_velero_roundtrip import delete_namespace, take_backup

WEB = {"tier": "web"}


def seed_tiers(ctl, ns: str) -> None:
    ctl.seed_namespace(ns, {"team": "lambda"})
    ctl.seed("v1", "configmaps", ns, {"metadata": {"name": "web-settings", "labels": WEB}, "data": {}})
    ctl.seed(
        "v1", "configmaps", ns, {"metadata": {"name": "db-settings", "labels": {"tier": "db"}}, "data": {}}
    )
    ctl.seed("v1", "configmaps", ns, {"metadata": {"name": "plain"}, "data": {}})
    install_knative_crd(ctl)
    seed_knative_service(ctl, ns, "web")
    ctl.store.patch(ksvc_resource(ctl), ns, "web", {"metadata": {"labels": {"app": "web", **WEB}}})


def ksvc_resource(ctl):
    from sandbox.k8s_emulator import crds

    return crds.by_path(ctl.store)[("serving.knative.dev/v1", "services")]


@pytest.fixture
def backed_up(kube_api, ctl, local_store):
    store = local_store()
    ns = f"tiers-{secrets.token_hex(3)}"
    seed_tiers(ctl, ns)
    target, manifest = take_backup(kube_api, store, ns)
    delete_namespace(ctl, ns)
    return ns, target, manifest, store


def test_a_restore_by_label_verifies_the_objects_the_selector_picks(ctl, backed_up):
    ns, target, manifest, store = backed_up
    options = velero.RestoreOptions(namespaces=[ns], label_selector=WEB)

    report = velero.restore(target, manifest, store, options)

    assert report["verified_objects"] == 2  # web-settings and the Knative Service web
    assert sorted(c["metadata"]["name"] for c in ctl.store.list(CONFIGMAPS, ns)) == [
        "kube-root-ca.crt",
        "web-settings",
    ]


def test_a_restore_by_label_that_velero_completes_without_one_of_them_fails_naming_it(ctl, backed_up):
    """The Knative Service's CRD is gone: Velero 1.12/1.13 skip it with an info log, Completed."""
    ns, target, manifest, store = backed_up
    ctl.store.delete(CRDS, "", "services.serving.knative.dev")
    options = velero.RestoreOptions(namespaces=[ns], label_selector=WEB, include_cluster_resources=False)

    with pytest.raises(IntegrityError, match=rf"{ns}/services.serving.knative.dev/web"):
        velero.restore(target, manifest, store, options)
