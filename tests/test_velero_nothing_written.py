"""A Kubernetes restore with existing_resource_policy `none` (Velero's default) writes only what
is missing: objects that exist are left as they are. A restore whose objects all exist wrote
nothing, yet its record said `restored` (target changed) and its rollback was allowed, and it put
the safety backup over objects the restore never touched, undoing writes made since. A restore
that created some objects and left the others was rolled back the same way. Emulated Kubernetes
API with its fake Velero, a real Prefect server."""

from __future__ import annotations

import contextlib

import pytest
from kubernetes.client.exceptions import ApiException
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

pytestmark = pytest.mark.usefixtures("prefect_server")


def _final_artifact(flow_run_id) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=["restore-checklist"]),
            )
        )
    return max(found, key=lambda a: a.created).data


@pytest.fixture
def app(kube_api, ctl, local_store):
    """Namespace `ns` with config maps `settings` and `flags`, backed up; then `settings` changed."""
    from flows.backup import backup_component
    from tests.k8s_helpers import k8s, seed_namespaces, seed_settings, set_configmap

    store = local_store()
    (ns,) = seed_namespaces(ctl, "none", seed=seed_settings)
    k8s(kube_api).core.create_namespaced_config_map(
        ns, {"metadata": {"name": "flags"}, "data": {"beta": "on"}}
    )
    target = kube_api.velero_target(include_namespaces=[ns])
    backup = backup_component("kubernetes", target=target, store=store)
    set_configmap(kube_api, ns, "settings", {"m": "2"})  # after the backup: the restore keeps it
    return ns, target, store, backup


def _refused_rollback(record, target, store, kube_api, ns, words: tuple[str, ...]) -> None:
    """A write made since the restore to an object it left as it was, then a rollback: refused,
    saying why, and that write is still there."""
    from flows.recovery import load_restore_record, rollback_restore
    from tasks.errors import BadInput
    from tests.k8s_helpers import configmap, set_configmap

    set_configmap(kube_api, ns, "settings", {"m": "3"})
    with pytest.raises(BadInput) as refused:
        rollback_restore(record.id, target=target, store=store)
    for word in words:
        assert word in str(refused.value), str(refused.value)
    assert configmap(kube_api, ns, "settings") == {"m": "3"}
    assert load_restore_record(store, record.id).status == record.status  # not 'rolled back'


@pytest.mark.parametrize(
    "options",
    [
        {},  # the whole backup
        {"namespaces": ["NS"]},
        {"namespaces": ["NS"], "resources": ["configmaps"]},
        {"namespaces": ["NS"], "resources": ["configmaps"], "names": ["settings", "flags"]},
    ],
    ids=["whole", "namespaces", "resources", "names"],
)
def test_a_restore_whose_objects_all_exist_says_it_restored_nothing(app, kube_api, options):
    from flows.recovery import load_restore_record, restore_with_checklist
    from tasks.errors import BadInput
    from tasks.operations.rollback_checks import check_rollback_allowed
    from tests.k8s_helpers import configmap

    ns, target, store, backup = app
    options = {k: [ns] if v == ["NS"] else v for k, v in options.items()}
    state = restore_with_checklist(
        "kubernetes", backup_id=backup.id, target=target, store=store, options=options, return_state=True
    )
    record = state.result()

    assert configmap(kube_api, ns, "settings") == {"m": "2"}  # left as it was
    assert record.status == "nothing restored" and record.target_changed is False
    assert record.report["created"] == [] and record.report["overwritten"] == []
    assert "wrote nothing" in record.report["note"]
    assert load_restore_record(store, record.id).status == "nothing restored"
    artifact = _final_artifact(state.state_details.flow_run_id)
    assert "Result: nothing restored" in artifact and "Result: restored" not in artifact
    with pytest.raises(BadInput, match="wrote nothing"):
        check_rollback_allowed(record)
    _refused_rollback(record, target, store, kube_api, ns, ("wrote nothing", "already existed"))


def test_a_named_restore_into_a_mapped_namespace_whose_objects_exist_restored_nothing(app, kube_api):
    from flows.recovery import restore_with_checklist
    from tests.k8s_helpers import configmap, k8s

    ns, target, store, backup = app
    other = f"{ns}-copy"
    core = k8s(kube_api).core
    core.create_namespace({"metadata": {"name": other}})
    core.create_namespaced_config_map(other, {"metadata": {"name": "settings"}, "data": {"m": "other"}})
    target = kube_api.velero_target(include_namespaces=[ns, other])
    options = {
        "namespaces": [ns],
        "resources": ["configmaps"],
        "names": ["settings"],
        "namespace_mapping": {ns: other},
    }
    record = restore_with_checklist(
        "kubernetes", backup_id=backup.id, target=target, store=store, options=options
    )
    assert configmap(kube_api, other, "settings") == {"m": "other"}
    assert record.status == "nothing restored" and record.target_changed is False


@pytest.mark.parametrize("named", [False, True], ids=["namespace", "names"])
def test_a_rollback_of_a_restore_that_only_created_objects_leaves_those_that_existed(app, kube_api, named):
    """Policy none, `flags` deleted since the backup: the restore created `flags` and left
    `settings` as it was. Its rollback restored the safety backup's namespace with policy update:
    `settings` was overwritten with its copy from before the restore, undoing a write made
    since. A restore with policy none overwrote nothing, so its rollback has nothing to put back:
    refused, naming what the restore created (left in place: deleting is the operator's call)."""
    from flows.recovery import restore_with_checklist
    from tests.k8s_helpers import configmap, k8s

    ns, target, store, backup = app
    k8s(kube_api).core.delete_namespaced_config_map("flags", ns)
    options = {"namespaces": [ns], "resources": ["configmaps"]}
    if named:
        options["names"] = ["settings", "flags"]
    record = restore_with_checklist(
        "kubernetes", backup_id=backup.id, target=target, store=store, options=options
    )

    assert configmap(kube_api, ns, "flags") == {"beta": "on"}
    assert configmap(kube_api, ns, "settings") == {"m": "2"}
    assert record.status == "restored" and record.target_changed is True
    _refused_rollback(record, target, store, kube_api, ns, ("overwrote nothing", f"{ns}/configmaps/flags"))
    assert record.report["created"] == [f"{ns}/configmaps/flags"]
    assert record.report["overwritten"] == []


def test_a_restore_that_made_its_namespace_wrote_to_the_target(app, kube_api):
    """The namespace deleted since the backup: the restore made it and its objects."""
    from flows.recovery import restore_with_checklist
    from tasks.components.kubernetes import api as kube
    from tests.k8s_helpers import configmap, k8s

    ns, target, store, backup = app
    kube.delete_namespace(k8s(kube_api), ns, interval=0.2)
    record = restore_with_checklist(  # nothing there to back up first: no safety backup
        "kubernetes", backup_id=backup.id, target=target, store=store, without_rollback=True
    )
    assert configmap(kube_api, ns, "settings") == {"m": "1"}
    assert record.status == "restored" and record.target_changed is True
    assert f"namespace {ns}" in record.report["created"]


def test_an_update_restore_lists_what_it_overwrote_and_stays_rollbackable(app, kube_api):
    from flows.recovery import restore_with_checklist, rollback_restore
    from tests.k8s_helpers import configmap

    ns, target, store, backup = app
    options = {"namespaces": [ns], "existing_resource_policy": "update"}
    record = restore_with_checklist(
        "kubernetes", backup_id=backup.id, target=target, store=store, options=options
    )
    assert configmap(kube_api, ns, "settings") == {"m": "1"}
    assert record.status == "restored" and record.target_changed is True
    assert f"{ns}/configmaps/settings" in record.report["overwritten"]
    rolled = rollback_restore(record.id, target=target, store=store)
    assert rolled.status == "rolled back"
    assert configmap(kube_api, ns, "settings") == {"m": "2"}


def test_a_rollback_of_an_update_restore_leaves_what_the_restore_did_not_write(app, kube_api):
    """`extra` was made after the backup: the restore (policy update, the whole namespace) left it
    as it was. Its rollback restored the safety backup's namespace with policy update, and put
    `extra` back as it was before the restore, undoing a write made since. It now puts back by
    name exactly what the restore overwrote."""
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
    from tests.k8s_helpers import configmap, k8s, set_configmap

    ns, target, store, backup = app
    core = k8s(kube_api).core
    core.create_namespaced_config_map(ns, {"metadata": {"name": "extra"}, "data": {"x": "before"}})
    options = {"namespaces": [ns], "existing_resource_policy": "update"}
    record = restore_with_checklist(
        "kubernetes", backup_id=backup.id, target=target, store=store, options=options
    )
    assert configmap(kube_api, ns, "settings") == {"m": "1"}
    assert f"{ns}/configmaps/extra" not in record.report["overwritten"]
    set_configmap(kube_api, ns, "extra", {"x": "written since"})

    rolled = rollback_restore(record.id, target=target, store=store)

    assert rolled.status == "rolled back"
    assert configmap(kube_api, ns, "settings") == {"m": "2"}  # what the restore overwrote: back
    assert configmap(kube_api, ns, "extra") == {"x": "written since"}  # never the restore's
    rollback = load_restore_record(store, rolled.rolled_back_by)
    assert rollback.options["names"] == ["flags", "settings"]


def test_a_failed_restore_with_policy_none_is_not_rolled_back_over_what_it_left(kube_api, ctl, local_store):
    """The restore created `flags` and the `cron` deployment, and Velero refused its pods (Pod
    Security): PartiallyFailed, the record `failed` with no report, so its rollback restored the
    whole namespace with policy update and put `settings`, which the restore had left, back as it
    was before, undoing a write made since. The failure now carries what the restore wrote."""
    from flows.backup import backup_component
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
    from tasks.errors import BadInput, ComponentFailed
    from tests.k8s_helpers import configmap, k8s, seed_namespaces, set_configmap

    store = local_store()
    (ns,) = seed_namespaces(ctl, "failed")
    target = kube_api.velero_target(include_namespaces=[ns])
    api = k8s(kube_api)
    backup = backup_component("kubernetes", target=target, store=store)
    api.core.patch_namespace(
        ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    api.core.delete_namespaced_config_map("flags", ns)
    api.apps.delete_namespaced_deployment("cron", ns)
    for pod in api.core.list_namespaced_pod(ns, label_selector="app=cron").items:
        with contextlib.suppress(ApiException):  # collected with their deployment meanwhile
            api.core.delete_namespaced_pod(pod.metadata.name, ns)
    set_configmap(kube_api, ns, "settings", {"mode": "changed"})
    with pytest.raises(ComponentFailed, match="PartiallyFailed"):
        restore_with_checklist("kubernetes", backup_id=backup.id, target=target, store=store)
    assert configmap(kube_api, ns, "flags") == {"beta": "off"}  # it did write
    (record,) = [load_restore_record(store, key.rsplit("/", 2)[-2]) for key in _record_keys(store)]
    assert record.status == "failed"
    set_configmap(kube_api, ns, "settings", {"mode": "written since"})
    with pytest.raises(BadInput, match="overwrote nothing"):
        rollback_restore(record.id, target=target, store=store)
    assert configmap(kube_api, ns, "settings") == {"mode": "written since"}
    assert f"{ns}/configmaps/flags" in load_restore_record(store, record.id).report["created"]


def _record_keys(store) -> list[str]:
    from tasks.storage.backends import backend_for
    from tasks.storage.layout import RESTORE_RECORD, RESTORES, layout

    keys = backend_for(store).list_keys(layout(store).records_dir(RESTORES))
    return [k for k in keys if k.endswith("/" + RESTORE_RECORD)]
