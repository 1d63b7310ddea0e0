"""The fake Velero's restores, as pkg/restore/restore.go and its item actions do them.

- Phases: New -> FailedValidation (backup missing or not Completed/PartiallyFailed) or
  InProgress -> Finalizing -> Completed/PartiallyFailed (restore_types.go). InProgress lasts
  until every PodVolumeRestore has finished (pkg/podvolume/restorer.go waits for them).
- Order: CRDs, namespaces, storage classes, PVs, PVCs, serviceaccounts, secrets, configmaps,
  pods, services, then the rest (deployments, custom resources, ...) (Velero's default resource
  priorities, pkg/cmd/server/config/config.go defaultRestorePriorities.HighPriorities:
  "customresourcedefinitions, namespaces, storageclasses, ... persistentvolumeclaims,
  serviceaccounts, secrets, configmaps, limitranges, pods, replicasets.apps, ..., endpoints,
  services"). A custom resource whose CRD the cluster lacks: velero_crds.py.
- Items (velero_items.py): resetMetadataAndStatus drops status and the server's metadata (uid,
  resourceVersion, ownerReferences, ...), finalizers stay; a pod that Succeeded or Failed is
  not restored (isCompleted); an object that exists and equals the backed-up one is skipped
  without a warning, one that differs is a warning (policy none) or updated (policy update);
  but a ServiceAccount that exists is merged with the backed-up one, whatever the policy
  (mergeServiceAccounts: the pull secrets, secrets, labels and annotations it lacks).
- A target namespace being deleted is waited for (EnsureNamespaceExistsAndIsReady), up to
  `resource_terminating_timeout` (Velero's 10 min), then created anew.
- A PV is restored with its PVC (actions/add_pv_from_pvc_action.go) only from a volume snapshot;
  renamed `velero-clone-<uuid>` when its name is taken and its claim's namespace is remapped
  (shouldRenamePV), else a PV still in the cluster is kept and no volume is made. A PV without
  a snapshot is not restored and the PVC's volumeName is cleared, so it is dynamically
  provisioned (empty). A restore that excludes persistentvolumes never resets the claims'
  volumeName: they wait for PVs that are not there. A claim that exists is skipped, its volume
  untouched.
- File-system backup data comes back only through a restored pod that mounts the volume, and
  only when the restore includes both PVCs and PVs: the
  pod gets the `restore-wait` init container and a PodVolumeRestore
  (actions/pod_volume_restore_action.go); a volume with no restored pod gets no data.
- Services lose clusterIP(s) (not headless ones) and, unless spec.preserveNodePorts, the
  nodePorts the cluster allocated; those `kubectl apply` asked for (last-applied-configuration,
  or managedFields for server-side apply) stay (actions/service_action.go), so a copy next to
  the original is refused (422: an item error).
- A namespace Velero makes gets the backed-up one's labels, annotations and spec (getNamespace).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from sandbox.k8s_emulator import crds, velero_crds
from sandbox.k8s_emulator.errors import ApiError
from sandbox.k8s_emulator.snapshot import (
    BACKUPS,
    NAMESPACES,
    PODS,
    PVCS,
    PVRS,
    PVS,
    RESTORES,
    SERVICES,
    Snapshot,
    cluster_scoped_wanted,
    ns_wanted,
    wanted,
)
from sandbox.k8s_emulator.store import Resource, match_labels, now_iso
from sandbox.k8s_emulator.velero_items import (
    claim,
    completed,
    identical,
    label,
    merged_account,
    pod_volumes,
    reset,
    restore_wait,
    service,
    valid_name,
)
from sandbox.k8s_emulator.velero_modifiers import resource_modifiers

ORDER = [  # group resources ('plural.group'; core: 'plural')
    "customresourcedefinitions.apiextensions.k8s.io",
    "namespaces",
    "storageclasses.storage.k8s.io",
    "persistentvolumes",
    "persistentvolumeclaims",
    "serviceaccounts",
    "secrets",
    "configmaps",
    "pods",
    "services",
]


def step(ctl, restore: dict[str, Any]) -> None:
    st = restore.get("status") or {}
    phase = st.get("phase", "")
    if phase in ("", "New"):
        _validate(ctl, restore)
    elif phase == "InProgress" and ctl.restore_outcome != "stuck":
        if ctl.restore_outcome == "Failed":
            ctl._set_status(
                RESTORES,
                restore,
                phase="Failed",
                completionTimestamp=now_iso(),
                failureReason="error downloading backup: emulated failure",
            )
        elif "progress" not in st:
            _apply(ctl, restore)
        else:
            _pod_volume_restores(ctl, restore)
    elif phase == "Finalizing":
        status: dict[str, Any] = {
            "phase": ctl.restore_outcome or "Completed",
            "completionTimestamp": now_iso(),
        }
        if ctl.restore_outcome == "PartiallyFailed":
            status["errors"] = 1
        elif st.get("errors"):
            status["phase"] = "PartiallyFailed"
        if ctl.restore_errors:  # Velero counts item errors; the phase says PartiallyFailed or not
            status["errors"] = ctl.restore_errors
        ctl._set_status(RESTORES, restore, **status)


def _validate(ctl, restore: dict[str, Any]) -> None:
    name = (restore.get("spec") or {}).get("backupName", "")
    backup = ctl.store.find(BACKUPS, ctl.namespace, name)
    phase = ((backup or {}).get("status") or {}).get("phase")
    error = None
    if backup is None or name not in ctl.snapshots:
        error = f'Error retrieving backup: backups.velero.io "{name}" not found'
    elif phase not in ("Completed", "PartiallyFailed"):
        error = f"backup is in phase {phase}, only Completed or PartiallyFailed backups can be restored"
    if error:
        ctl._set_status(RESTORES, restore, phase="FailedValidation", validationErrors=[error])
        return
    ctl._set_status(RESTORES, restore, phase="InProgress", startTimestamp=now_iso())


def _source_ns(res: Resource, obj: dict[str, Any]) -> str:
    if res is NAMESPACES:
        return obj["metadata"]["name"]
    if res is PVS:
        return ((obj.get("spec") or {}).get("claimRef") or {}).get("namespace", "")
    return obj["metadata"].get("namespace", "")


def _apply(ctl, restore: dict[str, Any]) -> None:
    spec = restore.get("spec") or {}
    rname, bname = restore["metadata"]["name"], spec.get("backupName", "")
    snap: Snapshot = ctl.snapshots.get(bname, Snapshot())
    mapping = spec.get("namespaceMapping") or {}
    update = (spec.get("existingResourcePolicy") or "none") == "update"
    modifiers = resource_modifiers(ctl, spec.get("resourceModifier"))
    restore_pvs = spec.get("restorePVs") is not False
    inc, exc = spec.get("includedResources"), spec.get("excludedResources")
    with_pvs = wanted(PVS, inc, exc)
    served = crds.served(ctl.store)  # discovery at the restore's start: a CRD's short names too
    cluster = cluster_scoped_wanted(spec)
    picked = [
        (res, obj)
        for res, obj in snap.items
        if res is not PVS
        and (
            ns_wanted(_source_ns(res, obj), spec.get("includedNamespaces"), spec.get("excludedNamespaces"))
            if res.namespaced or res is NAMESPACES
            else cluster
        )
        and wanted(res, inc, exc, served)
        and match_labels(obj["metadata"].get("labels") or {}, spec.get("labelSelector"))
    ]
    picked.sort(
        key=lambda item: (
            ORDER.index(item[0].group_resource) if item[0].group_resource in ORDER else len(ORDER)
        )
    )
    if _terminating(ctl, rname, {mapping.get(n, n) for n in (_source_ns(r, o) for r, o in picked) if n}):
        return  # InProgress, nothing restored yet: the next pass looks again
    pvs = {o["metadata"]["name"]: o for r, o in snap.items if r is PVS}
    restored = warnings = errors = 0
    for res, obj in picked:
        src_ns = _source_ns(res, obj) if res.namespaced or res is NAMESPACES else ""
        ns = mapping.get(src_ns, src_ns)
        if src_ns and ctl.store.find(NAMESPACES, "", ns) is None:
            # restore.go getNamespace: the backed-up namespace's labels, annotations and spec
            backed = next(
                (o for r, o in snap.items if r is NAMESPACES and o["metadata"]["name"] == src_ns), {}
            )
            meta = backed.get("metadata") or {}
            fresh = {k: meta[k] for k in ("labels", "annotations") if meta.get(k)}
            ctl.store.create(
                NAMESPACES, "", {"metadata": {"name": ns, **fresh}, "spec": backed.get("spec") or {}}
            )
            restored += 1
        if res is NAMESPACES or completed(res, obj):
            continue
        if not velero_crds.served_now(ctl.store, res):  # its CRD missing (velero_crds.py)
            errors += velero_crds.unresolved(ctl, rname, res, ns, obj["metadata"]["name"])
            continue
        new = reset(obj)
        if res is PVCS:
            mapped = src_ns in mapping
            errors += claim(ctl, new, src_ns, ns, snap, pvs, restore_pvs, rname, bname, with_pvs, mapped)
        elif res is SERVICES:
            service(new, bool(spec.get("preserveNodePorts")))
        elif res is PODS:
            new.setdefault("spec", {}).pop("nodeName", None)
            restore_wait(new, src_ns, obj["metadata"]["name"], snap)
        # after the item actions, on the object still in its source namespace (restore.go restoreItem)
        new, failed = modifiers(res, src_ns, new)
        errors += failed
        new = label(new, rname, bname)
        existing = ctl.store.find(res, ns, new["metadata"]["name"])
        if existing is None:
            try:
                created = ctl.store.create(res, ns, new)
            except ApiError:
                # restore.go: a create the API refuses (admission, validation) is an item error,
                # "error restoring <kind>/<ns>/<name>"; the restore goes on and ends PartiallyFailed
                errors += 1
                continue
            restored += 1
            if res is PODS and with_pvs and wanted(PVCS, inc, exc):
                # "Do not create podvolumerestore when current restore excludes pv/pvc"
                pod_volumes(ctl, created, src_ns, obj["metadata"]["name"], snap, rname)
        elif res.plural == "serviceaccounts" and not res.custom and not identical(existing, new):
            # restore.go: an existing ServiceAccount is merged with the backed-up one, whatever
            # the policy (velero_items.merged_account), never "could not restore"
            patch = merged_account(existing, new)
            if patch is not None:
                try:
                    ctl.store.patch(res, ns, new["metadata"]["name"], patch)
                    restored += 1
                except ApiError:
                    warnings += 1
        elif identical(existing, new):
            # "skipped: it already exists in the cluster and is the same as the backed up
            # version": no warning; with policy update only its restore labels are patched
            if update:
                with contextlib.suppress(ApiError):
                    ctl.store.patch(
                        res, ns, new["metadata"]["name"], {"metadata": {"labels": new["metadata"]["labels"]}}
                    )
        elif update:
            new["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            try:
                ctl.store.replace(res, ns, new["metadata"]["name"], new)
                restored += 1
            except ApiError:
                # pkg/restore/restore.go: an update the API refuses (an immutable field) falls
                # back to the restore labels only and is reported as a warning
                warnings += 1
        else:
            warnings += (
                1  # Velero: "could not restore, X already exists. ... in-cluster version is different"
            )
    status = {"progress": {"totalItems": len(picked), "itemsRestored": restored}, "warnings": warnings}
    if errors:
        status["errors"] = errors
    ctl._set_status(RESTORES, restore, **status)


def _terminating(ctl, rname: str, namespaces: set[str]) -> bool:
    """kube.EnsureNamespaceExistsAndIsReady: a target namespace that is being deleted is waited
    for, up to resourceTerminatingTimeout (10 min by default), and then created anew; past the
    timeout the items in it fail."""
    going = [
        n
        for n in namespaces
        if ((ctl.store.find(NAMESPACES, "", n) or {}).get("metadata") or {}).get("deletionTimestamp")
    ]
    if not going:
        ctl.terminating_waits.pop(rname, None)
        return False
    since = ctl.terminating_waits.setdefault(rname, time.monotonic())
    return time.monotonic() - since < ctl.resource_terminating_timeout


def _pod_volume_restores(ctl, restore: dict[str, Any]) -> None:
    """The restore-wait init container: the data lands once the restored pod runs; a pod that is
    gone before that fails its PodVolumeRestore (and the restore is PartiallyFailed)."""
    rname = restore["metadata"]["name"]
    errors = (restore.get("status") or {}).get("errors", 0)
    pending = 0
    for pvr in ctl.store.list(PVRS, ctl.namespace, f"velero.io/restore-name={valid_name(rname)}"):
        if (pvr.get("status") or {}).get("phase") in ("Completed", "Failed"):
            continue
        ns, uid, claim, data = ctl.pod_volume_data.get(pvr["metadata"]["name"], ("", "", "", ""))
        pod = ctl.store.find(PODS, ns, pvr["spec"]["pod"]["name"])
        if pod is None or pod["metadata"]["uid"] != uid:
            ctl._set_status(PVRS, pvr, phase="Failed", message="pod is gone before its volume was restored")
            errors += 1
        elif (pod.get("status") or {}).get("phase") == "Running":
            ctl.volumes[(ns, claim)] = data
            ctl._set_status(PVRS, pvr, phase="Completed")
        else:
            pending += 1
    if not pending:
        ctl._set_status(RESTORES, restore, phase="Finalizing", errors=errors)
