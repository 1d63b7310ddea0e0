"""Resource type names of a restore (`resources`, `exclude_resources`) and of a backup (the
target's `include_resources`, `exclude_resources`) are resolved against the cluster's API
discovery, as Velero resolves them, before anything happens. Velero keeps a name it cannot
resolve as it is and so matches nothing with it: `exclude_resources: ["secretz"]` restored the
Secrets it was meant to keep out, silently."""

from __future__ import annotations

import pytest

from sandbox.k8s_emulator.snapshot import BACKUPS, CONFIGMAPS, RESTORES, SERVICES
from sandbox.k8s_emulator.store import BY_PATH
from tasks.components import kubernetes as velero
from tasks.errors import BadInput
from tasks.storage.session import backup_session
from tests.k8s_helpers import seed_namespaces
from tests.test_velero_roundtrip import delete_namespace, take_backup

SECRETS = BY_PATH[("v1", "secrets")]


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"exclude_resources": ["secretz"]}, r"exclude_resources \['secretz'\]"),
        ({"resources": ["configmaps", "configmap.apps"]}, r"resources \['configmap.apps'\]"),
        (
            {"resources": ["svc"], "exclude_resources": ["services.apps"]},
            r"exclude_resources \['services.apps'\]",
        ),
        ({"resources": ["deploymentz", "svc"], "names": ["api"]}, r"resources \['deploymentz'\]"),
        ({"exclude_resources": ["secrets.v1"]}, r"exclude_resources \['secrets.v1'\]"),
    ],
    ids=["misspelt-exclusion", "wrong-group", "core-kind-in-another-group", "by-name", "version-for-group"],
)
def test_resource_types_the_cluster_does_not_serve_are_refused_before_the_restore(
    kube_api, ctl, local_store, options, refused
):
    store = local_store()
    (ns,) = seed_namespaces(ctl, "typo")
    target, manifest = take_backup(kube_api, store, ns)
    delete_namespace(ctl, ns)
    cluster = kube_api.state()

    with pytest.raises(BadInput, match=refused) as info:
        velero.restore(target, manifest, store, velero.RestoreOptions(**options))

    assert "kubectl api-resources" in str(info.value) and "Nothing was done" in str(info.value)
    assert ctl.store.list(RESTORES, "velero") == [] and kube_api.state() == cluster


@pytest.mark.parametrize("excluded", [["Secret"], ["secret"], ["secrets"]])
def test_an_exclusion_named_as_the_cluster_knows_it_excludes(kube_api, ctl, local_store, excluded):
    """A kind, a singular and a plural all resolve (and short names: 'cm', 'svc', 'deploy')."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "excl")
    target, manifest = take_backup(kube_api, store, ns)
    delete_namespace(ctl, ns)

    options = velero.RestoreOptions(resources=["cm", "Secret", "svc", "deploy"], exclude_resources=excluded)
    report = velero.restore(target, manifest, store, options)

    assert report["phase"] == "Completed"
    assert ctl.store.find(SECRETS, ns, "db-password") is None
    assert ctl.store.find(CONFIGMAPS, ns, "flags") is not None and ctl.store.find(SERVICES, ns, "api")


def test_a_backup_with_a_misspelt_resource_type_is_refused_before_velero_is_asked(kube_api, ctl, local_store):
    """The target block's include/exclude_resources: a typo backed up what it meant to leave out."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "bkp")
    for field in ("exclude_resources", "include_resources"):
        target = kube_api.velero_target(include_namespaces=[ns], **{field: ["configmaps", "secretz"]})
        refused = pytest.raises(BadInput, match=rf"{field} \['secretz'\]: not resource types")
        with refused, backup_session(store, "kubernetes") as session:
            velero.backup(target, session)
    assert ctl.store.list(BACKUPS, "velero") == []
    target = kube_api.velero_target(include_namespaces=[ns], exclude_resources=["Secret", "deployments.apps"])
    with backup_session(store, "kubernetes") as session:
        velero.backup(target, session)
        session.commit()
    doc = velero.load_document(store, session.manifest)
    assert "secrets" not in doc["inventory"][ns] and "deployments" not in doc["inventory"][ns]
    name = doc["backup"]["metadata"]["name"]
    held = {res.plural for res, _ in ctl.snapshots[name].items}
    assert "secrets" not in held and "deployments" not in held and "configmaps" in held


def test_a_kind_of_another_group_is_not_taken_for_ours():
    """'services.serving.knative.dev' is Knative's Service, not the core one: our verification
    must neither expect nor leave out core Services for it."""
    from tasks.components.kubernetes.api import canonical_resource

    assert canonical_resource("services.serving.knative.dev") == "services.serving.knative.dev"
    assert (
        canonical_resource("deployments.apps") == "deployments"
        and canonical_resource("Deploy") == "deployments"
    )
    assert (
        canonical_resource("configmaps.apps") == "configmaps.apps" and canonical_resource("svc") == "services"
    )
