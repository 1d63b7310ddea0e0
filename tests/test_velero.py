"""Component "kubernetes" (tasks/components/kubernetes/) against the Kubernetes API emulator and its fake
Velero, through the real `kubernetes` client over HTTP."""

from __future__ import annotations

import secrets
import threading

import pytest

from sandbox.k8s_emulator.store import BY_PATH
from tasks.components import kubernetes as velero
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes import quiesce
from tasks.errors import BadInput, ComponentFailed, ConfigurationError, NotFound
from tasks.storage.catalog import list_backups
from tasks.storage.session import backup_session
from tests.k8s_helpers import configmap, k8s, seed_namespaces, set_configmap


@pytest.fixture
def two_namespaces(ctl) -> tuple[str, str]:
    return seed_namespaces(ctl, "shop", "db")


@pytest.fixture
def target(kube_api, two_namespaces):
    return kube_api.velero_target(include_namespaces=list(two_namespaces))


@pytest.fixture
def store(local_store):
    return local_store()


def take_backup(target, store, component: str = "kubernetes"):
    with backup_session(store, component) as session:
        velero.backup(target, session)
        session.commit()
    return session.manifest


def test_backup_records_velero_facts_and_the_backup_cr(kube_api, target, store, two_namespaces):
    manifest = take_backup(target, store)
    eng = manifest.engine
    # a lowercase name (ours has T and Z); the id itself is in the CR's annotation and label
    assert eng["velero_backup"] == manifest.id.lower() and eng["phase"] == "Completed"
    assert eng["items_backed_up"] == eng["total_items"] > 0
    assert eng["volume_snapshots"]["completed"] == 2
    assert eng["namespaces"] == list(two_namespaces)
    assert eng["expiration"]  # TTL from the backup table (14 days)
    doc = velero.load_document(store, manifest)
    assert doc["backup"]["metadata"]["annotations"]["klb.io/backup-id"] == manifest.id
    assert doc["backup"]["metadata"]["labels"]["klb.io/backup-id"] == manifest.id
    assert doc["backup"]["spec"]["includedNamespaces"] == list(two_namespaces)
    assert doc["backup"]["spec"]["ttl"] == "336h0m0s"
    assert doc["inventory"][two_namespaces[0]]["configmaps"] == ["flags", "settings"]
    assert doc["inventory"][two_namespaces[0]]["secrets"] == ["db-password"]
    assert "czNjcjN0" not in str(doc)  # names only: no secret data in our record
    assert kube_api.controller.secret_reads == []  # nor in this process: metadata-only lists
    assert velero.verify(target, manifest, store)["velero_phase"] == "Completed"


def test_namespace_mapping_restore_leaves_the_source_untouched(kube_api, ctl, target, store, two_namespaces):
    shop, _ = two_namespaces
    manifest = take_backup(target, store)
    set_configmap(kube_api, shop, "settings", {"mode": "changed-after-backup"})
    before = kube_api.state(shop)
    writes = len(ctl.writes)
    copy = f"copy-{secrets.token_hex(3)}"
    report = velero.restore(
        target, manifest, store, velero.RestoreOptions(namespaces=[shop], namespace_mapping={shop: copy})
    )
    assert report["namespaces"] == {shop: copy} and report["verified_objects"] == 8
    assert configmap(kube_api, copy, "settings") == {"mode": "prod"}
    assert kube_api.state(shop) == before
    assert not [w for w in ctl.writes[writes:] if f"/namespaces/{shop}/" in w[1] or w[1].endswith(f"/{shop}")]
    assert ctl.volumes[(copy, "data")] == f"{shop} volume v1"


def test_partial_restore_restores_only_the_named_resource_types(kube_api, target, store, two_namespaces):
    shop, _ = two_namespaces
    manifest = take_backup(target, store)
    kube.delete_namespace(k8s(kube_api), shop, interval=0.01)
    report = velero.restore(
        target, manifest, store, velero.RestoreOptions(namespaces=[shop], resources=["configmaps", "secrets"])
    )
    assert report["verified_objects"] == 3
    k = k8s(kube_api)
    assert kube.list_names(k, shop, "configmaps") == ["flags", "kube-root-ca.crt", "settings"]
    assert kube.list_names(k, shop, "secrets") == ["db-password"]
    assert kube.list_names(k, shop, "deployments") == []
    assert kube.list_names(k, shop, "persistentvolumeclaims") == []


def test_partial_restore_of_one_object_by_name(kube_api, target, store, two_namespaces):
    shop, _ = two_namespaces
    manifest = take_backup(target, store)
    k = k8s(kube_api)
    k.core.delete_namespaced_config_map("flags", shop)
    set_configmap(kube_api, shop, "settings", {"mode": "edited"})
    report = velero.restore(
        target,
        manifest,
        store,
        velero.RestoreOptions(namespaces=[shop], resources=["configmaps"], names=["flags"]),
    )
    assert report["restored_objects"] == [f"{shop}/configmaps/flags"]
    assert configmap(kube_api, shop, "flags") == {"beta": "off"}
    assert configmap(kube_api, shop, "settings") == {"mode": "edited"}  # not named: untouched
    assert not [n for n in kube.list_namespaces(k) if n.startswith("klb-aside-")]  # scratch removed


def test_existing_objects_are_skipped_and_reported_unless_update(kube_api, target, store, two_namespaces):
    shop, _ = two_namespaces
    manifest = take_backup(target, store)
    set_configmap(kube_api, shop, "settings", {"mode": "edited"})
    opts = {"namespaces": [shop], "resources": ["configmaps"]}
    report = velero.restore(target, manifest, store, velero.RestoreOptions(**opts))
    assert f"{shop}/configmaps/settings" in report["already_existed"]
    assert "existing_resource_policy=update" in report["note"]
    assert configmap(kube_api, shop, "settings") == {"mode": "edited"}
    report = velero.restore(
        target, manifest, store, velero.RestoreOptions(**opts, existing_resource_policy="update")
    )
    assert configmap(kube_api, shop, "settings") == {"mode": "prod"}
    # what was overwritten is in a Velero safety backup, for a rollback
    rollback = kube_api.controller.snapshots[report["rollback_velero_backup"]]
    saved = [o for _, o in rollback.items if o["metadata"]["name"] == "settings"]
    assert [o["data"] for o in saved] == [{"mode": "edited"}]


def test_an_object_deleted_while_velero_backs_up_is_not_expected_back(
    kube_api, ctl, target, store, two_namespaces
):
    """Our inventory is listed before the Backup is created; an object deleted before Velero
    reads the namespace is not in the backup. Expecting it made every restore and drill of that
    backup fail ("Completed but these objects are missing"): only objects there both before and
    after the backup are expected; the others are recorded as changed during the backup."""
    shop, _ = two_namespaces
    ctl.backup_outcome = "stuck"  # Velero has not read the namespace yet
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(m=take_backup(target, store)), daemon=True)
    worker.start()
    backups = BY_PATH[("velero.io/v1", "backups")]
    ctl.settle(lambda: any((b.get("status") or {}).get("phase") for b in ctl.store.list(backups)))
    k8s(kube_api).core.delete_namespaced_config_map("flags", shop)
    ctl.backup_outcome = None
    worker.join()
    opts = velero.RestoreOptions(namespaces=[shop], namespace_mapping={shop: f"copy-{shop}"})
    report = velero.restore(target, done["m"], store, opts)
    assert report["phase"] == "Completed"
    assert kube.list_names(k8s(kube_api), f"copy-{shop}", "configmaps") == ["kube-root-ca.crt", "settings"]
    doc = velero.load_document(store, done["m"])
    assert doc["changed_during_backup"] == [f"{shop}/configmaps/flags"]


def test_objects_velero_could_not_update_are_named_in_the_report(kube_api, target, store, two_namespaces):
    """existing_resource_policy=update: an object the API refuses to update (an immutable
    ConfigMap) keeps its in-cluster version; Velero counts a warning and still says Completed
    (pkg/restore/restore.go processUpdateResourcePolicy: "patch attempt failed" is a warning).
    The report says so, with the command that lists them, instead of a plain success."""
    shop, _ = two_namespaces
    manifest = take_backup(target, store)
    k8s(kube_api).core.patch_namespaced_config_map(
        "settings", shop, {"data": {"mode": "edited"}, "immutable": True}
    )
    opts = velero.RestoreOptions(
        namespaces=[shop], resources=["configmaps"], existing_resource_policy="update"
    )
    report = velero.restore(target, manifest, store, opts)
    assert report["warnings"] == 1 and configmap(kube_api, shop, "settings") == {"mode": "edited"}
    assert "could not update 1" in report["note"]
    assert f"velero restore describe {report['velero_restore']} --details" in report["note"]


def test_named_objects_are_all_checked_before_any_is_put_back(kube_api, target, store, two_namespaces):
    """A partial restore of several named objects with existing_resource_policy=update: if the
    API would refuse one of them (an immutable ConfigMap that differs), none is written, so the
    namespace is never left half put back."""
    shop, _ = two_namespaces
    k = k8s(kube_api)
    k.core.create_namespaced_config_map(
        shop, {"metadata": {"name": "frozen"}, "data": {"v": "1"}, "immutable": True}
    )
    manifest = take_backup(target, store)
    set_configmap(kube_api, shop, "flags", {"beta": "on"})
    k.core.delete_namespaced_config_map("frozen", shop)
    k.core.create_namespaced_config_map(
        shop, {"metadata": {"name": "frozen"}, "data": {"v": "2"}, "immutable": True}
    )
    opts = velero.RestoreOptions(
        namespaces=[shop],
        resources=["configmaps"],
        names=["flags", "frozen"],
        existing_resource_policy="update",
    )
    with pytest.raises(BadInput, match="configmaps/frozen is immutable") as refused:
        velero.restore(target, manifest, store, opts)
    assert configmap(kube_api, shop, "flags") == {"beta": "on"}  # not put back alone
    assert configmap(kube_api, shop, "frozen") == {"v": "2"}
    assert "Nothing was changed" in str(refused.value)


def test_named_objects_the_api_would_refuse_leave_every_one_in_place(kube_api, target, store, two_namespaces):
    """A partial restore with existing_resource_policy=update where the API refuses one replace for
    a reason of its own (a Secret's `type` never changes: ValidateSecretUpdate; the server defaults
    it to Opaque): every write is tried as a server-side dry run first, so none is made and the
    namespace is not left half put back (flags was put back, then the Secret refused)."""
    shop, _ = two_namespaces
    k = k8s(kube_api)
    manifest = take_backup(target, store)
    set_configmap(kube_api, shop, "flags", {"beta": "on"})
    k.core.delete_namespaced_secret("db-password", shop)
    body = {"metadata": {"name": "db-password"}, "type": "example.com/pw", "data": {"pw": "bmV3"}}
    k.core.create_namespaced_secret(shop, body)
    opts = velero.RestoreOptions(
        namespaces=[shop],
        resources=["configmaps", "secrets"],
        names=["flags", "db-password"],
        existing_resource_policy="update",
    )
    with pytest.raises(BadInput, match=f"{shop}/secrets/db-password.*type") as refused:
        velero.restore(target, manifest, store, opts)
    assert configmap(kube_api, shop, "flags") == {"beta": "on"}  # not put back alone
    assert k.core.read_namespaced_secret("db-password", shop).type == "example.com/pw"
    assert "Nothing was changed" in str(refused.value)


def test_a_restore_by_name_that_fails_before_writing_removes_the_namespace_it_made(
    kube_api, ctl, target, store, two_namespaces
):
    """A restore by name into a new namespace (namespace_mapping) makes that namespace first; when
    it then fails before any copy is written (here Velero's scratch restore fails) the namespace
    goes too, and the failure is recorded as leaving the target untouched."""
    shop, _ = two_namespaces
    manifest = take_backup(target, store)
    dest = "copy-" + shop
    ctl.restore_outcome = "Failed"
    opts = velero.RestoreOptions(
        namespaces=[shop], resources=["configmaps"], names=["flags"], namespace_mapping={shop: dest}
    )
    with pytest.raises(ComponentFailed, match="ended Failed") as failed:
        velero.restore(target, manifest, store, opts)
    assert getattr(failed.value, "target_untouched", False) is True
    assert not kube.namespace_exists(k8s(kube_api), dest)


@pytest.mark.parametrize(
    "extra", [{"label_selector": {"tier": "web"}}, {"include_cluster_resources": True}, {"restore_pvs": True}]
)
def test_a_restore_by_name_refuses_the_filters_it_cannot_apply(
    kube_api, target, store, two_namespaces, extra
):
    """A restore by name picks objects by name alone (restored aside, then copied): a label selector
    (flags has no label tier=web), cluster-scoped objects or volume data asked for beside the names
    were silently dropped, and flags was put back all the same. Refused, with nothing changed."""
    shop, _ = two_namespaces
    manifest = take_backup(target, store)
    set_configmap(kube_api, shop, "flags", {"beta": "on"})
    opts = velero.RestoreOptions(
        namespaces=[shop], names=["flags"], existing_resource_policy="update", **extra
    )
    with pytest.raises(BadInput, match=f"{next(iter(extra))}.*names.*nothing was done"):
        velero.check_restore(target, manifest, store, opts)
    with pytest.raises(BadInput, match=next(iter(extra))):
        velero.restore(target, manifest, store, opts)
    assert configmap(kube_api, shop, "flags") == {"beta": "on"}


def test_long_namespaces_alike_are_restored_by_name_each_from_its_own(kube_api, ctl, store):
    """Two namespaces whose names share their first 45 characters: the scratch namespaces of a
    restore by name (and a drill's namespaces) cut a long name short, so both were restored aside
    into one, the second's objects skipped as existing, and each got the first's copy: b's
    settings silently overwritten with a's. Each now has a scratch namespace of its own."""
    from tasks.components.kubernetes.drills import drill_namespaces
    from tests.k8s_helpers import seed_settings

    a, b = seed_namespaces(ctl, "x" * 45 + "-a", "x" * 45 + "-b", seed=seed_settings)
    set_configmap(kube_api, b, "settings", {"m": "b"})
    target = kube_api.velero_target(include_namespaces=[a, b])
    manifest = take_backup(target, store)
    for ns in (a, b):
        set_configmap(kube_api, ns, "settings", {"m": "changed"})
    opts = velero.RestoreOptions(names=["settings"], existing_resource_policy="update")
    velero.restore(target, manifest, store, opts)
    assert (configmap(kube_api, a, "settings"), configmap(kube_api, b, "settings")) == (
        {"m": "1"},
        {"m": "b"},
    )
    doc = velero.load_document(store, manifest)
    assert len(set(drill_namespaces(doc, "d" * 40).values())) == 2


def test_a_restore_by_name_restores_aside_only_the_kinds_of_the_names(
    kube_api, ctl, target, store, two_namespaces
):
    """Velero cannot select by name, so every object of the kinds restored aside comes back in
    the scratch namespace. Restoring a ConfigMap by name brought back every Deployment of the
    namespace there too, at its full replicas: copies of the apps ran beside production (a worker
    consuming its queues) until the scratch namespace went. Only the kinds named objects have."""
    shop, _ = two_namespaces
    manifest = take_backup(target, store)
    set_configmap(kube_api, shop, "flags", {"beta": "on"})
    made = len(ctl.store.created)
    opts = velero.RestoreOptions(namespaces=[shop], names=["flags"], existing_resource_policy="update")
    assert velero.restore(target, manifest, store, opts)["restored_objects"] == [f"{shop}/configmaps/flags"]
    aside = {(plural, ns) for plural, ns, _, _ in ctl.store.created[made:] if ns.startswith("klb-aside-")}
    assert not {plural for plural, _ in aside} & {"deployments", "pods", "services", "secrets"}, aside
    assert configmap(kube_api, shop, "flags") == {"beta": "off"}


def test_update_of_named_objects_keeps_allocations_and_names_immutable_ones(
    kube_api, target, store, two_namespaces
):
    """A real API server keeps a Service's clusterIP/nodePort on an update that leaves them out,
    and refuses any data change to an immutable ConfigMap (ValidateConfigMapUpdate, 422): the
    restore says to delete it first instead of failing with the bare 422."""
    shop, _ = two_namespaces
    k = k8s(kube_api)
    body = {"metadata": {"name": "frozen"}, "data": {"v": "1"}, "immutable": True}
    k.core.create_namespaced_config_map(shop, body)
    manifest = take_backup(target, store)
    before = k.core.read_namespaced_service("api", shop).spec
    report = velero.restore(
        target,
        manifest,
        store,
        velero.RestoreOptions(
            namespaces=[shop], resources=["services"], names=["api"], existing_resource_policy="update"
        ),
    )
    assert report["restored_objects"] == [f"{shop}/services/api"]
    after = k.core.read_namespaced_service("api", shop).spec
    assert (after.cluster_ip, after.ports[0].node_port) == (before.cluster_ip, before.ports[0].node_port)
    k.core.delete_namespaced_config_map("frozen", shop)
    k.core.create_namespaced_config_map(shop, {**body, "data": {"v": "2"}})
    opts = velero.RestoreOptions(
        namespaces=[shop], resources=["configmaps"], names=["frozen"], existing_resource_policy="update"
    )
    with pytest.raises(BadInput, match=f"immutable.*kubectl -n {shop} delete configmaps frozen"):
        velero.restore(target, manifest, store, opts)
    k.core.delete_namespaced_config_map("frozen", shop)
    velero.restore(target, manifest, store, opts)
    assert configmap(kube_api, shop, "frozen") == {"v": "1"}


def test_quiesce_then_a_failing_restore_still_puts_back_2_5_and_1(
    kube_api, ctl, target, store, two_namespaces
):
    shop, _ = two_namespaces
    manifest = take_backup(target, store)
    ctl.restore_outcome = "Failed"
    with (
        pytest.raises(ComponentFailed, match=r"ended Failed.*emulated failure.*velero restore logs"),
        quiesce.quiesced(target.kube, shop) as counts,
    ):
        velero.restore(target, manifest, store, velero.RestoreOptions(namespaces=[shop]))
    assert counts == {"api": 2, "worker": 5, "cron": 1}
    k = k8s(kube_api)
    assert {d.metadata.name: d.spec.replicas for d in kube.list_deployments(k, shop)} == counts


@pytest.mark.parametrize("outcome", ["PartiallyFailed", "Failed"])
def test_a_backup_velero_does_not_complete_fails_with_the_reason(kube_api, ctl, target, store, outcome):
    before = kube_api.state()
    ctl.backup_outcome = outcome
    with pytest.raises(ComponentFailed, match=rf"ended {outcome} \(phase={outcome}.*velero backup describe"):
        take_backup(target, store)
    assert list_backups(store, "kubernetes") == []
    assert kube_api.state() == before


def test_a_stuck_backup_times_out_with_what_velero_says_and_can_be_cancelled(
    kube_api, ctl, kube_api_target_fast, store
):
    target = kube_api_target_fast
    ctl.backup_outcome = "stuck"
    with pytest.raises(ComponentFailed) as err:
        take_backup(target, store)
    message = str(err.value)
    assert "did not finish within" in message and "phase=InProgress" in message
    assert "backup is still in progress" in message and "rollout restart deployment/velero" in message
    assert list_backups(store, "kubernetes") == []
    name = message.split("Velero backup ", 1)[1].split(" ", 1)[0]
    ctl.restart_velero()  # what the error tells the operator to do
    assert velero.cancel_backup(target, name)["deleted"] is True
    with pytest.raises(NotFound, match="Velero has no backup"):
        velero.get_backup_cr(k8s(kube_api), target, name)


@pytest.fixture
def kube_api_target_fast(kube_api, two_namespaces):
    return kube_api.velero_target(include_namespaces=list(two_namespaces), backup_timeout_seconds=0.3)


def test_missing_velero_crds_give_a_clear_error_and_change_nothing(kube_api, ctl, target, store):
    before = kube_api.state()
    ctl.installed = False
    with pytest.raises(ConfigurationError, match="Velero is not installed"):
        take_backup(target, store)
    assert list_backups(store, "kubernetes") == []
    assert kube_api.state() == before
    state = velero.describe_current_state(target)
    assert state["velero"]["installed"] is False


def test_rbac_forbidding_backups_gives_a_clear_error(kube_api, ctl, target, store):
    before = kube_api.state()
    ctl.deny("create", "backups")
    with pytest.raises(ConfigurationError, match=r'forbidden by RBAC.*cannot create resource "backups"'):
        take_backup(target, store)
    assert list_backups(store, "kubernetes") == []
    assert kube_api.state() == before


def test_rbac_forbidding_restores_changes_nothing(kube_api, ctl, target, store, two_namespaces):
    manifest = take_backup(target, store)
    kube.delete_namespace(k8s(kube_api), two_namespaces[0], interval=0.01)
    before = kube_api.state()
    ctl.deny("create", "restores")
    with pytest.raises(ConfigurationError, match='cannot create resource "restores"'):
        velero.restore(target, manifest, store, velero.RestoreOptions(namespaces=[two_namespaces[0]]))
    assert kube_api.state() == before


def test_a_velero_backup_that_is_gone_is_a_clear_not_found_and_nothing_is_restored(
    kube_api, ctl, target, store, two_namespaces
):
    manifest = take_backup(target, store)
    velero.cancel_backup(target, manifest.engine["velero_backup"])  # expired / deleted in Velero
    kube.delete_namespace(k8s(kube_api), two_namespaces[0], interval=0.01)
    before = kube_api.state()
    with pytest.raises(NotFound, match="Velero has no backup.*velero backup get"):
        velero.restore(target, manifest, store, velero.RestoreOptions())
    with pytest.raises(NotFound, match="Velero has no backup"):
        velero.verify(target, manifest, store)
    assert kube_api.state() == before


def test_restore_refuses_namespaces_the_backup_does_not_hold(kube_api, target, store):
    manifest = take_backup(target, store)
    with pytest.raises(BadInput, match="not in Velero backup"):
        velero.restore(target, manifest, store, velero.RestoreOptions(namespaces=["nope"]))
    with pytest.raises(BadInput, match="no namespace to restore"):
        velero.restore(
            target,
            manifest,
            store,
            velero.RestoreOptions(exclude_namespaces=list(manifest.engine["namespaces"])),
        )
    with pytest.raises(ValueError, match="not valid names"):
        velero.RestoreOptions(namespace_mapping={"a": "Bad_Name"})


def test_a_storage_location_that_is_unavailable_stops_the_backup(kube_api, ctl, two_namespaces, store):
    target = kube_api.velero_target(include_namespaces=list(two_namespaces), storage_location="missing")
    with pytest.raises(ConfigurationError, match="no BackupStorageLocation 'missing'"):
        take_backup(target, store)


@pytest.mark.parametrize("fs_backup", [False, True], ids=["snapshots", "fs"])
def test_drill_restores_into_isolated_namespaces_verifies_and_cleans_up(
    kube_api, ctl, target, store, two_namespaces, fs_backup
):
    target = target.model_copy(update={"default_volumes_to_fs_backup": fs_backup})
    manifest = take_backup(target, store)
    before = kube_api.state()
    report = velero.drill(target, manifest, store, "d" + secrets.token_hex(2))
    assert report["verified"] is True
    assert set(report["namespaces"]) == set(two_namespaces)
    assert all(ns.startswith("restore-drill-") for ns in report["namespaces"].values())
    assert report["checks"][f"{two_namespaces[0]}/configmaps"] == {"expected": 2, "restored": 2}
    # where its RTO went, phase by phase
    assert set(report["checks"]["seconds"]) == {"velero restore", "inventory check", "claims bound"}
    names = kube.list_namespaces(k8s(kube_api))
    assert not [n for n in names if n.startswith("restore-drill-")]
    assert kube_api.state() == before  # production unchanged, drill namespaces gone


def test_drill_cleans_up_also_when_the_restore_fails(kube_api, ctl, target, store):
    manifest = take_backup(target, store)
    ctl.restore_outcome = "PartiallyFailed"
    with pytest.raises(ComponentFailed, match="PartiallyFailed"):
        velero.drill(target, manifest, store, "fail" + secrets.token_hex(2))
    assert not [n for n in kube.list_namespaces(k8s(kube_api)) if n.startswith("restore-drill-")]


def test_a_velero_whose_crds_lack_a_field_we_send_refuses_it_before_anything_runs(
    kube_api, ctl, target, store
):
    """Velero < 1.12's Restore CRD has no resourceModifier. By default the API server prunes an
    undeclared field silently, so a drill's "replicas 0" rule would vanish and its apps start at
    full scale beside production. The project creates Velero objects with fieldValidation=Strict:
    the server refuses (400), and nothing is restored."""
    manifest = take_backup(target, store)
    ctl.older_crds("restores", "resourceModifier")
    before = kube_api.state()
    with pytest.raises(ConfigurationError, match=r'unknown field "spec.resourceModifier".*Velero >= 1\.12'):
        velero.drill(target, manifest, store, "old" + secrets.token_hex(2))
    assert kube_api.server.store.list(BY_PATH[("velero.io/v1", "restores")]) == []
    assert kube_api.state() == before


def test_describe_current_state_counts_objects_and_lists_pvcs(kube_api, target, two_namespaces, store):
    take_backup(target, store)
    state = velero.describe_current_state(target)
    shop = two_namespaces[0]
    assert state["namespaces"][shop]["counts"] == {
        "deployments": 3,
        "services": 1,
        "configmaps": 2,
        "secrets": 1,
        "persistentvolumeclaims": 1,
        "serviceaccounts": 0,
        "roles": 0,
        "rolebindings": 0,
    }
    assert {(p["namespace"], p["name"]) for p in state["pvcs"]} == {(ns, "data") for ns in two_namespaces}
    assert state["velero"]["installed"] is True
    assert state["velero"]["storage_location"]["phase"] == "Available"


def test_every_object_the_project_creates_has_a_kubernetes_safe_name(
    kube_api, ctl, target, store, two_namespaces
):
    """Every kind the project creates (Backups, Restores, DeleteBackupRequests, resource-modifier
    ConfigMaps, scratch/drill namespaces and what is copied into them) is named
    `^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`; Velero's own names and every label value fit in 63
    characters (Velero labels restored objects with the backup and restore names)."""
    import re

    shop, db = two_namespaces
    fs_target = target.model_copy(update={"default_volumes_to_fs_backup": True})
    manifest = take_backup(fs_target, store)
    velero.restore(
        target,
        manifest,
        store,
        velero.RestoreOptions(namespaces=[shop], namespace_mapping={shop: "copy-" + shop}),
    )
    velero.restore(
        target,
        manifest,
        store,
        velero.RestoreOptions(namespaces=[db], resources=["configmaps"], names=["flags"]),
    )
    velero.restore(
        target,
        manifest,
        store,
        velero.RestoreOptions(namespaces=[db], resources=["configmaps"], existing_resource_policy="update"),
    )
    velero.drill(fs_target, manifest, store, "Names" + secrets.token_hex(2))
    assert velero.cancel_backup(target, manifest.engine["velero_backup"])["deleted"] is True
    name_re = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    created = kube_api.server.store.created  # every create since the fixture reset the emulator
    kinds = {plural for plural, *_ in created}
    assert {
        "backups",
        "restores",
        "deletebackuprequests",
        "configmaps",
        "namespaces",
        "podvolumebackups",
    } <= kinds
    for plural, ns, name, labels in created:
        if plural in ("clusterroles", "clusterrolebindings") and name.startswith("system:"):
            continue  # the cluster's bootstrap RBAC (system:discovery), not the project's
        assert name_re.fullmatch(name), (plural, ns, name)
        if plural in ("backups", "restores", "namespaces", "services"):
            assert len(name) <= 63, (plural, name)
        assert all(len(v) <= 63 for v in labels.values()), (plural, name, labels)


def test_a_restore_by_name_into_a_terminating_namespace_waits_for_it_and_makes_it_anew(
    kube_api, target, store, two_namespaces
):
    """A namespace being deleted (Terminating: the namespace controller is removing its content)
    refuses new objects (403 "being terminated") and stays until its content is gone. A restore
    by name into it took it for existing and failed writing its copy; it now waits for the
    namespace to go and makes it anew, as Velero does for a whole namespace
    (EnsureNamespaceExistsAndIsReady), and the copy is written there."""
    shop, _ = two_namespaces
    manifest = take_backup(target, store)
    server = kube_api.server.store
    k = k8s(kube_api)
    before = server.namespace_termination_seconds
    server.namespace_termination_seconds = 1.5  # long enough to outlast the scratch restore
    try:
        k.core.delete_namespace(shop)
        opts = velero.RestoreOptions(namespaces=[shop], resources=["configmaps"], names=["flags"])
        report = velero.restore(target, manifest, store, opts)
    finally:
        server.namespace_termination_seconds = before
    assert report["restored_objects"] == [f"{shop}/configmaps/flags"]
    assert kube.namespace_active(k, shop)
    assert configmap(kube_api, shop, "flags") == {"beta": "off"}
    assert [n for n in kube.list_namespaces(k) if n.startswith("klb-aside-")] == []
