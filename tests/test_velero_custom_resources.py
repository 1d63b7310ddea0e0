"""Custom resources in the project's inventory (tasks/components/kubernetes/custom.py): a
backup of a namespace holding Knative Services lists them (found through discovery), and a
restore that does not bring one back fails naming it, with what to do. Before, the inventory
held only built-in kinds: a restore of the namespace onto a cluster without Knative's CRD
(Velero skips the Services with an info log, the Restore Completed) passed as verified."""

from __future__ import annotations

import json
import secrets

import pytest

from sandbox.k8s_emulator import crds
from sandbox.k8s_emulator.snapshot import NAMESPACES
from sandbox.k8s_emulator.store import CRDS
from tasks.components import kubernetes as velero
from tasks.components.kubernetes.backups import BackupSpec, run_backup
from tasks.errors import BadInput, IntegrityError
from tasks.storage.session import backup_session
from tests.k8s_helpers import install_knative_crd, seed_knative_service, seed_settings
from tests.test_velero_roundtrip import delete_namespace, take_backup

KSVC_KIND = "services.serving.knative.dev"
CRD_NAME = "services.serving.knative.dev"
SERVER_SET = {"uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"}


def seed_kn(ctl, ns: str) -> None:
    """A namespace like the platform's: a ConfigMap, a core Service and a Knative Service of the
    same name (two kinds, never one)."""
    install_knative_crd(ctl)
    seed_settings(ctl, ns)
    ctl.seed("v1", "services", ns, {"metadata": {"name": "hello"}, "spec": {"ports": [{"port": 80}]}})
    seed_knative_service(ctl, ns, "hello")


def whole_state(ctl, ns: str) -> dict:
    """Every object of `ns`, the namespace and the Knative CRD, as Velero restores them
    (server-set metadata, status, restore labels and allocated clusterIPs left out)."""
    out = {}
    with ctl.store.lock:
        items = [
            (r, n, o) for (r, o_ns, n), o in ctl.store.objects.items() if ns in (o_ns, n) or n == CRD_NAME
        ]
    for res, name, obj in items:
        if res.group == "velero.io":
            continue
        obj = json.loads(json.dumps(obj))
        meta = {k: v for k, v in obj.pop("metadata").items() if k not in SERVER_SET}
        meta["labels"] = {
            k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith("velero.io/")
        }
        obj.pop("status", None)
        if res.builtin == "services":
            obj["spec"].pop("clusterIP", None), obj["spec"].pop("clusterIPs", None)
        out[(res.group_resource, name)] = {**obj, "metadata": meta}
    return out


def test_the_inventory_lists_custom_resources_found_through_discovery(kube_api, ctl, local_store):
    store = local_store()
    ns = f"kn-{secrets.token_hex(3)}"
    seed_kn(ctl, ns)
    _, manifest = take_backup(kube_api, store, ns)
    held = velero.load_document(store, manifest)["inventory"][ns]
    assert held[KSVC_KIND] == ["hello"] and held["services"] == ["hello"]
    assert not [k for k in held if k.endswith("velero.io")]  # Velero's own objects are not the workload


def test_a_namespace_with_a_knative_service_and_its_crd_comes_back_whole(kube_api, ctl, local_store):
    """Back up, lose the namespace and the CRD, restore the whole backup (cluster resources
    included): the CRD first, then the Service; the whole state compares equal."""
    store = local_store()
    ns = f"kn-{secrets.token_hex(3)}"
    seed_kn(ctl, ns)
    before = whole_state(ctl, ns)
    target, manifest = take_backup(kube_api, store, ns)
    ctl.store.delete(CRDS, "", CRD_NAME)
    delete_namespace(ctl, ns)
    report = velero.restore(target, manifest, store, velero.RestoreOptions())
    assert report["phase"] == "Completed" and report["warnings"] == 0
    after = whole_state(ctl, ns)
    assert sorted(after) == sorted(before)
    assert {k: v for k, v in after.items() if v != before[k]} == {}
    assert report["verified_objects"] == 3  # the ConfigMap, the core Service, the Knative Service


def _two_namespaces(kube_api, ctl, local_store):
    store = local_store()
    token = secrets.token_hex(3)
    kn, other = f"kn-{token}", f"other-{token}"
    seed_kn(ctl, kn)
    seed_settings(ctl, other)
    target = kube_api.velero_target(include_namespaces=[kn, other])
    with backup_session(store, "kubernetes") as session:
        velero.backup(target, session)
        session.commit()
    return store, target, session.manifest, kn


def test_a_restore_that_drops_a_custom_resource_because_its_crd_is_missing_fails_naming_it(
    kube_api, ctl, local_store
):
    """The target cluster lost Knative's CRD; a restore of one namespace leaves the CRDs out, so
    Velero skips the Knative Service (an info log, Completed, no warning): the check names it."""
    store, target, manifest, kn = _two_namespaces(kube_api, ctl, local_store)
    ctl.store.delete(CRDS, "", CRD_NAME)
    delete_namespace(ctl, kn)
    with pytest.raises(IntegrityError) as lost:
        velero.restore(target, manifest, store, velero.RestoreOptions(namespaces=[kn]))
    said = str(lost.value)
    assert f"{kn}/{KSVC_KIND}/hello" in said
    assert "include_cluster_resources" in said and "operator" in said
    # restoring the CRD first, as the message says, brings it back
    report = velero.restore(
        target, manifest, store, velero.RestoreOptions(namespaces=[kn], include_cluster_resources=True)
    )
    assert report["phase"] == "Completed"
    res = crds.by_path(ctl.store)[("serving.knative.dev/v1", "services")]
    assert ctl.store.find(res, kn, "hello") is not None


def test_from_velero_1_14_the_same_loss_fails_as_a_partially_failed_restore(kube_api, ctl, local_store):
    store, target, manifest, kn = _two_namespaces(kube_api, ctl, local_store)
    ctl.store.delete(CRDS, "", CRD_NAME)
    delete_namespace(ctl, kn)
    ctl.unresolved_mode = "error"
    with pytest.raises(Exception) as failed:
        velero.restore(target, manifest, store, velero.RestoreOptions(namespaces=[kn]))
    assert "PartiallyFailed" in str(failed.value)


def test_a_backup_taken_without_cluster_resources_restored_where_the_crd_is_gone_fails(
    kube_api, ctl, local_store
):
    store = local_store()
    ns = f"kn-{secrets.token_hex(3)}"
    seed_kn(ctl, ns)
    target = kube_api.velero_target(include_namespaces=[ns])
    with backup_session(store, "kubernetes") as session:
        run_backup(target, session, BackupSpec.of(target, include_cluster_resources=False))
        session.commit()
    ctl.store.delete(CRDS, "", CRD_NAME)
    ctl.store.delete(NAMESPACES, "", ns)
    ctl.settle(lambda: ctl.store.find(NAMESPACES, "", ns) is None)
    with pytest.raises(IntegrityError) as lost:
        velero.restore(target, manifest := session.manifest, store, velero.RestoreOptions())
    assert f"{ns}/{KSVC_KIND}/hello" in str(lost.value) and manifest


def test_a_rollback_does_not_put_back_custom_resources_the_restore_never_wrote():
    """A rollback restores the safety backup by namespace and kind: with the restore having
    overwritten only a ConfigMap, a whole-namespace rollback would also put the Knative Service
    back over writes made to it since. Its kinds were not in the rollback's scope, so it went
    ahead; now it is narrowed to the ConfigMap by name."""
    from tasks.components.kubernetes.written import exact_rollback

    inventory = {"app": {"configmaps": ["settings"], KSVC_KIND: ["hello"]}}
    done = {"created": [], "overwritten": ["app/configmaps/settings"]}
    narrowed = exact_rollback({"namespaces": ["app"]}, done, inventory, "safety")
    assert narrowed["resources"] == ["configmaps"] and narrowed["names"] == ["settings"]


def test_a_restore_by_name_of_a_custom_resource_is_refused_saying_how_to_restore_it(
    kube_api, ctl, local_store
):
    """A restore by `names` copies built-in kinds only (writing a custom kind needs RBAC the
    flows do not have): a name that is a Knative Service of the backup is refused saying so and
    how to bring it back, not reported as absent from the backup; nothing changes."""
    store = local_store()
    ns = f"kn-{secrets.token_hex(3)}"
    install_knative_crd(ctl)
    seed_settings(ctl, ns)
    seed_knative_service(ctl, ns, "only-kn")
    target, manifest = take_backup(kube_api, store, ns)
    before = whole_state(ctl, ns)
    with pytest.raises(BadInput, match=r"(?s)only-kn.*custom resource.*restore (its|their) namespace"):
        velero.restore(target, manifest, store, velero.RestoreOptions(namespaces=[ns], names=["only-kn"]))
    assert whole_state(ctl, ns) == before


def test_a_restore_by_name_says_which_objects_of_that_name_it_did_not_copy(kube_api, ctl, local_store):
    """`names: [hello]` where a core Service and a Knative Service share the name: the Service is
    copied, the Knative Service is not (a custom kind) and the report says so."""
    store = local_store()
    ns = f"kn-{secrets.token_hex(3)}"
    seed_kn(ctl, ns)
    target, manifest = take_backup(kube_api, store, ns)
    report = velero.restore(target, manifest, store, velero.RestoreOptions(namespaces=[ns], names=["hello"]))
    assert report["not_copied"] == [f"{ns}/{KSVC_KIND}/hello"]
    assert f"{ns}/services/hello" in report["restored_objects"] + report["already_existed"]


def test_a_name_the_backup_does_not_hold_is_named_even_beside_uncopied_objects(kube_api, ctl, local_store):
    """`names: [hello, nosuch]`: `hello` is a Service and a Knative Service, `nosuch` nothing: the
    refusal names `nosuch` as not in the backup (not an empty list of uncopied objects)."""
    store = local_store()
    ns = f"kn-{secrets.token_hex(3)}"
    seed_kn(ctl, ns)
    target, manifest = take_backup(kube_api, store, ns)
    with pytest.raises(BadInput, match=r"objects \['nosuch'\] of types .* are not in the backup"):
        velero.restore(
            target, manifest, store, velero.RestoreOptions(namespaces=[ns], names=["hello", "nosuch"])
        )


def test_a_custom_kind_named_by_its_short_name_is_planned_as_velero_resolves_it(kube_api, ctl, local_store):
    """Velero resolves `ksvc` to Knative's Services (its discovery helper), the restore planned
    with the name as spelt: `resources: [ksvc]` re-created the Knative Service while the report
    said nothing was written (recorded 'nothing restored', no rollback), and `exclude_resources:
    [ksvc]` failed a restore that did what was asked, calling the excluded Service missing."""
    store = local_store()
    ns = f"kn-{secrets.token_hex(3)}"
    seed_kn(ctl, ns)
    target, manifest = take_backup(kube_api, store, ns)
    res = crds.by_path(ctl.store)[("serving.knative.dev/v1", "services")]
    ctl.store.delete(res, ns, "hello")
    left = velero.restore(
        target, manifest, store, velero.RestoreOptions(namespaces=[ns], exclude_resources=["ksvc"])
    )
    assert left["phase"] == "Completed" and ctl.store.find(res, ns, "hello") is None
    back = velero.restore(target, manifest, store, velero.RestoreOptions(namespaces=[ns], resources=["ksvc"]))
    assert ctl.store.find(res, ns, "hello") is not None
    assert back["created"] == [f"{ns}/{KSVC_KIND}/hello"] and back["verified_objects"] == 1


def test_the_rollback_of_a_short_name_restore_reaches_no_further_than_it_wrote(kube_api, ctl, local_store):
    """A rollback narrows by the kinds the restore wrote: named `ksvc`, they matched no kind of
    the safety backup as spelt, so a restore that only re-created `hello` was rolled back over
    the whole kind, `bye` (which it left alone) included. The report records the names as
    Velero resolved them, and the rollback is refused, saying what to put back by hand."""
    from tasks.operations.rollback import rollback_options

    store = local_store()
    ns = f"kn-{secrets.token_hex(3)}"
    seed_kn(ctl, ns)
    seed_knative_service(ctl, ns, "bye")
    target, manifest = take_backup(kube_api, store, ns)
    res = crds.by_path(ctl.store)[("serving.knative.dev/v1", "services")]
    ctl.store.delete(res, ns, "hello")
    _, safety = take_backup(kube_api, store, ns)  # as the checklist takes it before the restore
    options = {"namespaces": [ns], "resources": ["ksvc"]}
    report = velero.restore(target, manifest, store, velero.RestoreOptions(**options))
    assert report["created"] == [f"{ns}/{KSVC_KIND}/hello"] and report["overwritten"] == []
    assert report["resolved_resources"] == {"resources": [KSVC_KIND]}
    with pytest.raises(BadInput, match=f"{ns}/{KSVC_KIND}/bye"):
        rollback_options(store, "kubernetes", manifest.id, options, safety, report)
