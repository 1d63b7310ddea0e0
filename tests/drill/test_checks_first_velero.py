"""A Kubernetes restore through the checklist refuses what does not fit the backup or would merge
into a live namespace before the checklist: no safety backup, no record, no approval asked.
Found by an adversarial review: the component had no check_restore, so an unknown namespace was
refused only inside the restore, after the safety backup, and its 'failed' record (not marked
untouched) let a rollback put that safety backup over writes made since; and some mappings were
not refused at all (they merged namespaces and reported success)."""

from __future__ import annotations

import pytest

from flows.backup import backup_component
from flows.recovery import restore_with_checklist
from tasks.errors import BadInput
from tasks.storage.backends import backend_for
from tasks.storage.layout import RESTORE_RECORD
from tests.k8s_helpers import seed_namespaces, seed_settings

pytestmark = pytest.mark.usefixtures("prefect_server")


def _written(store) -> list[str]:
    return sorted(backend_for(store).list_keys(store.prefix))


@pytest.fixture
def shop(kube_api, ctl, local_store):
    """Two namespaces backed up, a third that exists (in the target's scope) and is not in the backup."""
    a, b, live = seed_namespaces(ctl, "a", "b", "live", seed=seed_settings)
    target = kube_api.velero_target(include_namespaces=[a, b, live])
    store = local_store()
    ctl.seed("v1", "configmaps", live, {"metadata": {"name": "only-live"}, "data": {"x": "1"}})
    backup = backup_component("kubernetes", target=target, store=store)
    return a, b, live, target, store, backup


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"namespaces": ["{a}", "nope"]}, r"namespaces \['nope'\] are not in Velero backup"),
        ({"namespaces": ["{a}"], "exclude_namespaces": ["{a}"]}, "the exclusions leave no namespace"),
        ({"exclude_namespaces": ["{a}x"]}, r"exclude_namespaces \['{a}x'\] are not in Velero backup"),
        ({"namespaces": ["{a}"], "namespace_mapping": {"{b}": "x-{a}"}}, "this restore does not include"),
        (
            {"namespaces": ["{a}", "{b}"], "namespace_mapping": {"{a}": "x-{a}", "{b}": "x-{a}"}},
            r"maps \['{a}', '{b}'\] all to 'x-{a}'",
        ),
        (
            {"namespaces": ["{a}", "{b}"], "namespace_mapping": {"{a}": "{b}"}},
            r"maps '{a}' onto '{b}', which this restore also restores",
        ),
        (
            {"namespaces": ["{a}"], "namespace_mapping": {"{a}": "{live}"}},
            r"namespace_mapping restores aside, into a new namespace: \['{live}'\] exist",
        ),
        ({"namespaces": ["{a}"], "resources": ["configmaps"], "names": ["nope"]}, r"objects \['nope'\]"),
        ({"exclude_resources": ["secretz"]}, r"exclude_resources \['secretz'\]: not resource types"),
        ({"resources": ["configmap.apps"]}, r"resources \['configmap.apps'\]: not resource types"),
    ],
    ids=[
        "unknown-namespace",
        "excluded-all",
        "misspelt-exclusion",
        "mapping-of-nothing",
        "two-onto-one",
        "onto-a-source",
        "onto-live",
        "unknown-name",
        "misspelt-resource-exclusion",
        "resource-of-another-group",
    ],
)
def test_kubernetes_options_that_do_not_fit_are_refused_before_the_checklist(
    shop, kube_api, options, refused
):
    a, b, live, target, store, backup = shop

    def fill(value):
        if isinstance(value, str):
            return value.format(a=a, b=b, live=live)
        if isinstance(value, list):
            return [fill(v) for v in value]
        return {fill(k): fill(v) for k, v in value.items()}

    before, cluster = _written(store), kube_api.state()
    with pytest.raises(BadInput, match=fill(refused)):
        restore_with_checklist(
            "kubernetes", backup_id=backup.id, target=target, store=store, options=fill(options)
        )
    assert _written(store) == before  # no safety backup, no restore record
    assert kube_api.state() == cluster


def test_a_restore_into_a_namespace_outside_the_target_is_refused_before_the_checklist(shop, kube_api, ctl):
    """The backup holds `a`; the target block now covers only `b`: its safety backup would not
    hold `a`, so a restore with policy update overwrote objects no rollback could put back (the
    rollback then said `a` 'did not exist before')."""
    a, b, _, target, store, backup = shop
    narrow = target.model_copy(update={"include_namespaces": [b]})
    before, cluster = _written(store), kube_api.state()
    with pytest.raises(BadInput, match=rf"writes to namespaces \['{a}'\], which exist outside the target"):
        restore_with_checklist(
            "kubernetes",
            backup_id=backup.id,
            target=narrow,
            store=store,
            options={"namespaces": [a], "existing_resource_policy": "update"},
        )
    assert _written(store) == before and kube_api.state() == cluster


def test_a_mapping_into_a_live_namespace_is_refused_by_the_restore_itself(shop, kube_api):
    """Without the checklist too (partial_restore): the copy 'aside' merged into `live`."""
    from flows.scenarios import partial_restore

    a, _, live, target, store, backup = shop
    cluster = kube_api.state()
    with pytest.raises(BadInput, match="restores aside, into a new namespace"):
        partial_restore(backup.id, [a], namespace_mapping={a: live}, target=target, store=store)
    assert kube_api.state() == cluster


def test_a_label_selector_that_matches_nothing_is_not_a_restore(shop, kube_api):
    """Velero restored nothing (no object has the label), said Completed, and with no object
    expected none was missing: the restore said 'restored'. It fails now, marked untouched, so
    there is nothing to roll back."""
    from flows.recovery import load_restore_record, rollback_restore

    a, _, _, target, store, backup = shop
    cluster = kube_api.state()
    with pytest.raises(BadInput, match="matched no object of backup"):
        restore_with_checklist(
            "kubernetes",
            backup_id=backup.id,
            target=target,
            store=store,
            options={"namespaces": [a], "label_selector": {"app": "no-such-label"}},
        )
    assert kube_api.state() == cluster
    (key,) = [k for k in _written(store) if k.endswith("/" + RESTORE_RECORD)]
    record = load_restore_record(store, key.rsplit("/", 2)[-2])
    assert record.status == "failed" and record.target_changed is False
    with pytest.raises(BadInput, match="failed before it changed"):
        rollback_restore(record.id, target=target, store=store)


def test_the_approval_form_says_which_namespaces_go_aside():
    """The form said 'in place: a Velero Restore into the namespaces (existing objects per the
    policy)' for every restore: one that maps a namespace into a new one too, and without saying
    which policy (the default, none, leaves every existing object as it is)."""
    from tasks.operations.plan import action_of
    from tasks.verbs import restore_options

    opts = restore_options("kubernetes", {"namespaces": ["a", "b"], "namespace_mapping": {"a": "copy-a"}})
    assert "but namespaces a as copy-a: aside, into new namespaces" in action_of("kubernetes", opts)
    assert action_of("kubernetes", restore_options("kubernetes", {})).startswith("in place")
    # the default policy leaves what exists: a restore of objects that all exist brings nothing back
    assert "LEFT AS THEY ARE (policy none)" in action_of("kubernetes", restore_options("kubernetes", {}))
    update = restore_options("kubernetes", {"existing_resource_policy": "update"})
    assert "OVERWRITTEN (policy update)" in action_of("kubernetes", update)


def test_volumes_options_that_do_not_fit_are_refused_before_the_checklist(kube_api, ctl, local_store):
    """Component volumes restores through the same engine and had no check_restore either."""
    (app,) = seed_namespaces(ctl, "app")
    target, store = kube_api.velero_target(include_namespaces=[app]), local_store()
    backup = backup_component("volumes", target=target, store=store)
    before, cluster = _written(store), kube_api.state()
    with pytest.raises(BadInput, match=r"namespaces \['nope'\] are not in Velero backup"):
        restore_with_checklist(
            "volumes", backup_id=backup.id, target=target, store=store, options={"namespaces": ["nope"]}
        )
    assert _written(store) == before and kube_api.state() == cluster
