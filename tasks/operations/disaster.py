"""Disaster-recovery scenarios for Kubernetes (runbook scenarios 2 and 3, partial restores): which
backup to restore from, the forensic backup of the broken state, and the deletions that let
Velero restore over it. The flows in flows/scenarios.py compose these under the component lock."""

from __future__ import annotations

import contextlib
from datetime import datetime

from prefect import get_run_logger, task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE

from blocks.kubernetes import VeleroTarget
from blocks.store import StoreBlock
from tasks.components import kubernetes as velero
from tasks.components import volumes
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes.quiesce import check_may_quiesce, unstopped_users
from tasks.components.registry import load_target
from tasks.errors import BackupError, BadInput, NotFound
from tasks.models import Manifest
from tasks.operations.scope import backup_for
from tasks.storage.catalog import LATEST, from_the_future, list_backups, verify_backup
from tasks.storage.session import backup_session
from tasks.table import policy

PVC_RESOURCES = volumes.VOLUME_RESOURCES
# how long deleted claims are waited for (pvc-protection holds one while a pod still uses it)
PVC_DELETE_TIMEOUT = 600.0


def velero_target(component: str, ref: str | Block | None) -> VeleroTarget:
    target = load_target(component, ref)
    if not isinstance(target, VeleroTarget):
        raise BadInput(f"target {ref!r} is a {type(target).__name__}, not a Velero target")
    return target


def _holds(store: StoreBlock, manifest: Manifest, namespace: str, pvcs: list[str] | None = None) -> bool:
    inv = velero.load_document(store, manifest)["inventory"]
    if namespace not in inv:
        return False
    held = set(inv[namespace].get("persistentvolumeclaims", []))
    return pvcs is None or set(pvcs) <= held


@task(task_run_name="forensic-backup-{namespace}", cache_policy=NO_CACHE)
def forensic_backup_task(
    target: VeleroTarget, store: StoreBlock, namespace: str, component: str
) -> str | None:
    """Keep the broken state (for the post-mortem) before it is replaced; None if it is gone."""
    if not kube.namespace_exists(kube.connect(target.kube), namespace):
        get_run_logger().warning("namespace %s does not exist: no forensic backup to take", namespace)
        return None
    retention = policy(component).retention
    hours = retention.total_seconds() / 3600
    overrides = {"include_namespaces": [namespace], "exclude_namespaces": [], "ttl_hours": hours}
    # its own component with kind forensic: listed, verified, restorable by id, expired by
    # retention; never 'latest', a drill's pick, nor the good backup protecting older ones
    labels = {"kind": "forensic", "purpose": "forensic", "namespace": namespace}
    with backup_session(store, component, labels) as s:
        if component == "volumes":
            volumes.run_backup(target, s, volumes.spec(target, **overrides))
        else:
            velero.run_backup(target, s, velero.BackupSpec.of(target, label_selector={}, **overrides))
        s.commit(retention=retention)
    return s.id


@task(task_run_name="delete-namespace-{namespace}", cache_policy=NO_CACHE)
def delete_namespace_task(target: VeleroTarget, namespace: str) -> None:
    kube.delete_namespace(kube.connect(target.kube), namespace, interval=target.poll_interval_seconds)


@task(task_run_name="delete-pvcs-{namespace}", cache_policy=NO_CACHE)
def delete_pvcs_task(target: VeleroTarget, namespace: str, names: list[str]) -> None:
    k = kube.connect(target.kube)
    for name in names:
        with contextlib.suppress(NotFound):
            kube.delete_pvc(k, namespace, name)
    kube.wait_for(
        lambda: not ({p["name"] for p in kube.list_pvcs(k, namespace)} & set(names)),
        PVC_DELETE_TIMEOUT,
        target.poll_interval_seconds,
        f"PVCs {names} in {namespace} to be deleted",
    )


def backup_holding_namespace(
    store: StoreBlock, target: VeleroTarget, backup_id: str, namespace: str
) -> Manifest:
    """The given Kubernetes backup, or 'latest' of that namespace (operations/scope.py: the
    newest routine backup whose scope covers it, never a damaged one); it must hold it."""
    try:
        manifest = backup_for(store, backup_id, "kubernetes", target, {"namespaces": [namespace]})
    except NotFound as exc:
        if backup_id != LATEST:
            raise
        raise NotFound(
            f"no kubernetes backup holds namespace {namespace!r}: nothing to restore it from ({exc})"
        ) from None
    if not _holds(store, manifest, namespace):
        raise BadInput(f"backup {manifest.id} does not hold namespace {namespace!r}")
    return manifest


def newest_good_volumes_backup(
    store: StoreBlock, target: VeleroTarget, namespace: str, pvcs: list[str] | None, before: datetime | None
) -> tuple[Manifest, dict[str, str]]:
    """The newest volumes backup (at/before `before`) that holds the PVCs and verifies good, and
    why each newer one was rejected."""
    logger = get_run_logger()
    rejected: dict[str, str] = {}
    listed = [m for m in list_backups(store, "volumes", until=before) if m.routine]
    for candidate in reversed(listed):
        if from_the_future(candidate):  # a skewed clock: not chosen as newest, as `latest` does
            rejected[candidate.id] = "its source time is in the future (clock skew?): restore it by id"
            continue
        try:
            if not _holds(store, candidate, namespace, pvcs):
                rejected[candidate.id] = f"does not hold the PVCs of {namespace}"
                continue
            verify_backup(store, candidate)
            volumes.verify(target, candidate, store)
        except BackupError as exc:
            rejected[candidate.id] = str(exc)
            logger.warning("backup %s rejected: %s", candidate.id, exc)
            continue
        return candidate, rejected
    raise NotFound(f"no volumes backup of {namespace} verifies good: {rejected or 'there are none'}")


def refuse_other_claims(target: VeleroTarget, doc: dict, namespace: str, names: list[str]) -> None:
    """Before anything changes: restoring the data of `names` from a file-system backup would
    rewrite every other claim of the namespace the backup's pods mount too."""
    rewritten = volumes.rewritten_too(target, doc, {namespace: names})
    if rewritten:
        raise BadInput(
            f"restoring {names} from this file-system backup would also rewrite {rewritten}, whose "
            "pods Velero restores with them: name those claims too (or leave pvcs out for all). "
            "Nothing was changed"
        )


def refuse_unpermitted(target: VeleroTarget, namespace: str, names: list[str]) -> None:
    """Before anything changes: may this account quiesce the apps of `namespace` and delete the
    claims `names` there? Asked as dry runs; a refusal is the ConfigurationError naming the verb."""
    k = kube.connect(target.kube)
    check_may_quiesce(k, namespace)
    for name in names:
        with contextlib.suppress(NotFound):  # gone already: nothing to delete
            fn = k.core.delete_namespaced_persistent_volume_claim
            k.call(f"delete PVC {namespace}/{name}", fn, name, namespace, dry_run="All")


def refuse_running_writers(target: VeleroTarget, namespace: str, names: list[str]) -> None:
    """Before anything changes: claims about to be deleted and restored that pods quiescing does
    not stop still mount (quiesce.unstopped_users). Deleted, such a claim stays Terminating until
    the pod goes; restored, its data would be written under a running writer."""
    users = unstopped_users(kube.connect(target.kube), namespace, names)
    if users:
        listed = "; ".join(f"claim {namespace}/{claim} by pods {pods}" for claim, pods in users.items())
        first = next(iter(users.values()))[0]
        raise BadInput(
            f"claims to be restored are mounted by pods that quiescing does not stop ({listed}): only "
            "Deployments are scaled to 0, and bare pods or those of another controller (StatefulSet, "
            "DaemonSet, Job) would keep writing. Stop them first (kubectl -n "
            f"{namespace} delete pod {first}, or scale their controller to 0), then run again. "
            "Nothing was changed"
        )


def refuse_retained_volumes(target: VeleroTarget, doc: dict, namespace: str, names: list[str]) -> None:
    """Before anything changes: the PVs, with reclaimPolicy Retain, of the claims about to be
    restored from `doc`: those of claims about to be deleted, and those of claims already gone
    (the backup records which PV each claim had). Such a PV stays, Released, under its name once
    its claim is gone, and Velero restores a volume from a native snapshot under that same name:
    restore.go shouldRestore waits its resourceTerminatingTimeout (10 min by default) for the PV
    to go, then fails the item, and the restored claim stays Pending (or, if the PV was made
    Available again, binds the old disk instead of the backup's). CSI snapshots and file-system
    backups are provisioned anew (other names): not blocked."""
    k = kube.connect(target.kube)
    through_pods = (
        {c for (ns, c) in volumes.fs_claims(target, doc) if ns == namespace}
        if doc["describe"].get("fs_backups")
        else set()
    )
    claims = {p["name"]: p["volume"] for p in kube.list_pvcs(k, namespace)}
    recorded = doc.get("claim_volumes", {}).get(namespace, {})
    to_delete, left_behind = [], []  # of claims that exist (deleted by this run), of claims gone
    for name in sorted(set(names) - through_pods):
        volume = claims[name] if name in claims else recorded.get(name)
        pv = kube.read_pv(k, volume) if volume else None
        if pv is not None and pv.spec.persistent_volume_reclaim_policy == "Retain" and not pv.spec.csi:
            if name in claims:
                to_delete.append(f"{volume} (claim {namespace}/{name})")
            else:
                left_behind.append(f"{volume} (claim {namespace}/{name}, gone)")
    why = []
    if to_delete:
        first = to_delete[0].split(" ", 1)[0]
        why.append(
            f"PVs {to_delete} have persistentVolumeReclaimPolicy Retain: once their claims are deleted "
            "they stay Released under the names Velero restores their snapshots to, and Velero waits "
            "10 min (its resourceTerminatingTimeout) for them to go, then fails the restore. Set them "
            f"to Delete first (`kubectl patch pv {first} -p "
            '\'{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}\'`; the forensic backup this '
            "restore takes keeps their data)"
        )
    if left_behind:
        first = left_behind[0].split(" ", 1)[0]
        why.append(
            f"PVs {left_behind} of claims that no longer exist are still in the cluster with "
            "persistentVolumeReclaimPolicy Retain, under the names Velero restores their snapshots "
            "to: Velero waits 10 min (its resourceTerminatingTimeout) for them to go, then fails the "
            f"restore. Delete them first (`kubectl delete pv {first}`: with Retain the disk itself "
            "stays, for the post-mortem)"
        )
    if why:
        raise BadInput("; ".join(why) + ", then run again. Nothing was changed")
