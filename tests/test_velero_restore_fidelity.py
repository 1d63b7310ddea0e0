"""The emulated Velero restores items as pkg/restore/restore.go does, and the project's restore
reports what it did: objects equal to the backed-up ones are skipped without a warning,
finalizers come back, completed pods do not, and a namespace being deleted is waited for."""

from __future__ import annotations

from sandbox.k8s_emulator.snapshot import CONFIGMAPS, NAMESPACES, PODS
from tasks.components import kubernetes as velero
from tasks.storage.session import backup_session
from tests.k8s_helpers import seed_namespaces, seed_settings


def take_backup(kube_api, store, ns: str):
    target = kube_api.velero_target(include_namespaces=[ns])
    with backup_session(store, "kubernetes") as session:
        velero.backup(target, session)
        session.commit()
    return target, session.manifest


def pod(name: str) -> dict:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


def test_only_existing_objects_that_differ_from_the_backup_are_warnings(kube_api, ctl, local_store):
    """Velero skips an existing object equal to the backed-up one without a word ("the same as
    the backed up version") and warns only for one that differs; the emulator warned for
    every existing object, so a report's warnings did not say how many objects were not put back."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "same", seed=seed_settings)
    ctl.seed("v1", "configmaps", ns, {"metadata": {"name": "flags"}, "data": {"beta": "off"}})
    target, manifest = take_backup(kube_api, store, ns)
    ctl.store.patch(CONFIGMAPS, ns, "settings", {"data": {"m": "edited"}})

    report = velero.restore(target, manifest, store, velero.RestoreOptions(namespaces=[ns]))

    assert report["warnings"] == 1  # settings differs; flags is the backup's
    assert report["already_existed"] == [f"{ns}/configmaps/flags", f"{ns}/configmaps/settings"]


def test_finalizers_come_back_with_the_objects(kube_api, ctl, local_store):
    """restore.go resetMetadata drops the server's metadata (uid, resourceVersion,
    ownerReferences, ...) and keeps finalizers; the emulator dropped them."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "fin", seed=seed_settings)
    body = {"metadata": {"name": "guarded", "finalizers": ["example.com/keep"]}, "data": {"a": "1"}}
    ctl.seed("v1", "configmaps", ns, body)
    target, manifest = take_backup(kube_api, store, ns)
    ctl.store.delete(NAMESPACES, "", ns)
    # the namespace stays Terminating while its finalizer holds the ConfigMap: its controller
    # lets it go, as the finalizer's owner would
    ctl.settle(lambda: ctl.store.get(CONFIGMAPS, ns, "guarded")["metadata"].get("deletionTimestamp"))
    ctl.store.patch(CONFIGMAPS, ns, "guarded", {"metadata": {"finalizers": None}})
    ctl.settle(lambda: ctl.store.find(NAMESPACES, "", ns) is None)

    velero.restore(target, manifest, store, velero.RestoreOptions())

    assert ctl.store.get(CONFIGMAPS, ns, "guarded")["metadata"]["finalizers"] == ["example.com/keep"]


def test_completed_pods_are_not_restored(kube_api, ctl, local_store):
    """restore.go isCompleted: a pod that Succeeded or Failed is skipped; the emulator brought
    it back, and the kubelet ran it again."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "done", seed=seed_settings)
    for name, phase in (("job-ok", "Succeeded"), ("job-bad", "Failed"), ("server", None)):
        ctl.seed("v1", "pods", ns, pod(name))
        if phase:
            ctl.store.patch(PODS, ns, name, {"status": {"phase": phase}}, status=True)
    target, manifest = take_backup(kube_api, store, ns)
    ctl.store.delete(NAMESPACES, "", ns)
    ctl.settle(lambda: ctl.store.find(NAMESPACES, "", ns) is None)

    report = velero.restore(target, manifest, store, velero.RestoreOptions())

    assert report["phase"] == "Completed"
    assert [p["metadata"]["name"] for p in ctl.store.list(PODS, ns)] == ["server"]


def test_a_restore_into_a_namespace_being_deleted_waits_for_it_and_makes_it_anew(kube_api, ctl, local_store):
    """Velero waits for a Terminating target namespace to go (EnsureNamespaceExistsAndIsReady,
    up to its resourceTerminatingTimeout) and creates it anew; the emulator failed every item
    (403: the namespace is being terminated). The report counted the namespace's objects, which
    were going, as 'already existed and left as they are'."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "going", seed=seed_settings)
    target, manifest = take_backup(kube_api, store, ns)
    kept = ctl.store.namespace_termination_seconds
    ctl.store.namespace_termination_seconds = 3  # terminating still when the Restore starts
    try:
        ctl.store.delete(NAMESPACES, "", ns)
        report = velero.restore(target, manifest, store, velero.RestoreOptions())
    finally:
        ctl.store.namespace_termination_seconds = kept

    assert report["phase"] == "Completed" and report["already_existed"] == []
    assert "deletionTimestamp" not in ctl.store.get(NAMESPACES, "", ns)["metadata"]
    assert ctl.store.get(CONFIGMAPS, ns, "settings")["data"] == {"m": "1"}


def test_a_service_account_that_exists_is_merged_with_the_backed_up_one(kube_api, ctl, local_store):
    """restore.go (mergeServiceAccounts, whatever the policy): a ServiceAccount that exists gets the
    backed-up one's imagePullSecrets, secrets, labels and annotations it lacks, and keeps its own.
    The emulator warned and left it as it was (or, with policy update, replaced it): the `default`
    ServiceAccount, which the cluster makes in a namespace before Velero restores into it, came
    back without its imagePullSecrets, so the restored pods could not pull their images."""
    from sandbox.k8s_emulator.store import BY_PATH

    accounts = BY_PATH[("v1", "serviceaccounts")]
    store = local_store()
    (ns,) = seed_namespaces(ctl, "sa", seed=seed_settings)
    pull = {"imagePullSecrets": [{"name": "regcred"}], "metadata": {"labels": {"team": "lambda"}}}
    ctl.store.patch(accounts, ns, "default", pull)
    ctl.seed("v1", "serviceaccounts", ns, {"metadata": {"name": "runner"}, "secrets": [{"name": "db"}]})
    target, manifest = take_backup(kube_api, store, ns)
    ctl.store.delete(NAMESPACES, "", ns)
    ctl.settle(lambda: ctl.store.find(NAMESPACES, "", ns) is None)

    report = velero.restore(target, manifest, store, velero.RestoreOptions())

    default = ctl.store.get(accounts, ns, "default")
    assert default["imagePullSecrets"] == [{"name": "regcred"}]
    assert default["metadata"]["labels"]["team"] == "lambda"
    assert report["warnings"] == 0
    # into a namespace where it exists with its own: both, the cluster's first (policy update too)
    ctl.store.patch(accounts, ns, "runner", {"secrets": [{"name": "own"}], "metadata": {"labels": {}}})
    for policy in ("none", "update"):
        options = velero.RestoreOptions(existing_resource_policy=policy)
        velero.restore(target, manifest, store, options)
        assert ctl.store.get(accounts, ns, "runner")["secrets"] == [{"name": "own"}, {"name": "db"}]


def test_a_restore_that_only_merged_service_accounts_says_what_it_wrote(kube_api, ctl, local_store):
    """Velero's merge patch carries no restore label, and written.py found what a restore wrote
    by that label: a restore whose only change was merging pull secrets into the ServiceAccounts
    that existed said "wrote nothing", so the checklist recorded the target unchanged and a
    rollback had nothing to undo. Those it changed are overwritten now, with what was merged in;
    one left identical is not written."""
    from sandbox.k8s_emulator.store import BY_PATH
    from tasks.verbs import target_changed

    accounts = BY_PATH[("v1", "serviceaccounts")]
    store = local_store()
    (ns,) = seed_namespaces(ctl, "sa", seed=seed_settings)
    ctl.store.patch(accounts, ns, "default", {"imagePullSecrets": [{"name": "regcred"}]})
    ctl.seed("v1", "serviceaccounts", ns, {"metadata": {"name": "runner"}, "secrets": [{"name": "db"}]})
    target, manifest = take_backup(kube_api, store, ns)
    ctl.store.patch(accounts, ns, "default", {"imagePullSecrets": None})
    ctl.store.patch(accounts, ns, "runner", {"secrets": None})

    report = velero.restore(target, manifest, store, velero.RestoreOptions())

    assert sorted(report["overwritten"]) == [f"{ns}/serviceaccounts/default", f"{ns}/serviceaccounts/runner"]
    assert report["merged"] == {
        f"{ns}/serviceaccounts/default": {"imagePullSecrets": ["regcred"]},
        f"{ns}/serviceaccounts/runner": {"secrets": ["db"]},
    }
    assert not report["note"].startswith(velero.NOTHING_WRITTEN)  # settings was left: its note
    assert target_changed("kubernetes", {}, report)
    again = velero.restore(target, manifest, store, velero.RestoreOptions())  # now identical
    assert again["overwritten"] == [] and "merged" not in again
    assert again["note"].startswith(velero.NOTHING_WRITTEN)
