"""The fake Velero's restores, as pkg/restore/restore.go and its item actions do them.

- Phases: New -> FailedValidation (backup missing or not Completed/PartiallyFailed) or
  InProgress -> Finalizing -> Completed/PartiallyFailed (restore_types.go). InProgress lasts
  until every PodVolumeRestore has finished (pkg/podvolume/restorer.go waits for them).
- Order: namespaces, PVs, PVCs, serviceaccounts, secrets, configmaps, pods, services, then the
  rest (deployments, ...) (Velero's default resource priorities, pkg/cmd/server/config/config.go
  defaultRestorePriorities.HighPriorities: "... persistentvolumeclaims, serviceaccounts, secrets,
  configmaps, limitranges, pods, replicasets.apps, ..., endpoints, services").
- resetMetadataAndStatus keeps only name, namespace, labels and annotations; status is dropped.
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
- Services lose clusterIP(s) and nodePorts unless spec.preserveNodePorts
  (actions/service_action.go): both are allocated by the new cluster.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from typing import Any

import yaml

from sandbox.k8s_emulator.controllers import claims_of
from sandbox.k8s_emulator.errors import ApiError
from sandbox.k8s_emulator.patches import json_patch
from sandbox.k8s_emulator.snapshot import (
    BACKUPS,
    CONFIGMAPS,
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
    resource_names,
    wanted,
)
from sandbox.k8s_emulator.store import Resource, match_labels, now_iso

ORDER = [
    "namespaces",
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


def _reset(obj: dict[str, Any]) -> dict[str, Any]:
    new = {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("status",)}
    meta = new["metadata"]
    new["metadata"] = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta}
    new["metadata"].pop("namespace", None)
    return new


def _label(obj: dict[str, Any], restore_name: str, backup_name: str) -> dict[str, Any]:
    """addRestoreLabels, which restore.go calls after the resource modifiers: a modifier that
    replaces an object's labels does not take these away."""
    obj["metadata"].setdefault("labels", {}).update(
        {"velero.io/backup-name": _valid(backup_name), "velero.io/restore-name": _valid(restore_name)}
    )
    return obj


def _valid(name: str) -> str:
    """label.GetValidName: at most 63 characters (longer names: 57 + a hash)."""
    return name if len(name) <= 63 else name[:57] + format(abs(hash(name)) % 16**6, "06x")


def _apply(ctl, restore: dict[str, Any]) -> None:
    spec = restore.get("spec") or {}
    rname, bname = restore["metadata"]["name"], spec.get("backupName", "")
    snap: Snapshot = ctl.snapshots.get(bname, Snapshot())
    mapping = spec.get("namespaceMapping") or {}
    update = (spec.get("existingResourcePolicy") or "none") == "update"
    modifiers = _modifiers(ctl, spec.get("resourceModifier"))
    restore_pvs = spec.get("restorePVs") is not False
    inc, exc = spec.get("includedResources"), spec.get("excludedResources")
    with_pvs = wanted(PVS, inc, exc)
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
        and wanted(res, inc, exc)
        and match_labels(obj["metadata"].get("labels") or {}, spec.get("labelSelector"))
    ]
    picked.sort(key=lambda item: ORDER.index(item[0].plural) if item[0].plural in ORDER else len(ORDER))
    pvs = {o["metadata"]["name"]: o for r, o in snap.items if r is PVS}
    restored = warnings = errors = 0
    for res, obj in picked:
        src_ns = _source_ns(res, obj) if res.namespaced or res is NAMESPACES else ""
        ns = mapping.get(src_ns, src_ns)
        if src_ns and ctl.store.find(NAMESPACES, "", ns) is None:
            labels = next(
                (
                    o["metadata"].get("labels") or {}
                    for r, o in snap.items
                    if r is NAMESPACES and o["metadata"]["name"] == src_ns
                ),
                {},
            )
            ctl.store.create(NAMESPACES, "", {"metadata": {"name": ns, "labels": labels}})
            restored += 1
        if res is NAMESPACES:
            continue
        new = _reset(obj)
        if res is PVCS:
            mapped = src_ns in mapping
            errors += _claim(ctl, new, src_ns, ns, snap, pvs, restore_pvs, rname, bname, with_pvs, mapped)
        elif res is SERVICES:
            _service(new, bool(spec.get("preserveNodePorts")))
        elif res is PODS:
            new.setdefault("spec", {}).pop("nodeName", None)
            _restore_wait(new, src_ns, obj["metadata"]["name"], snap)
        for rule in modifiers:  # after the item actions (restore.go restoreItem)
            new = rule(res, ns, new)
        new = _label(new, rname, bname)
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
                _pod_volumes(ctl, created, src_ns, obj["metadata"]["name"], snap, rname)
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
            warnings += 1  # Velero: "could not restore, X already exists"
    status = {"progress": {"totalItems": len(picked), "itemsRestored": restored}, "warnings": warnings}
    if errors:
        status["errors"] = errors
    ctl._set_status(RESTORES, restore, **status)


def _claim(ctl, pvc, src_ns, ns, snap, pvs, restore_pvs, rname, bname, with_pvs, mapped) -> int:
    """Its PV from the snapshot (the claim is then created by the caller); -> item errors."""
    spec = pvc.setdefault("spec", {})
    name = pvc["metadata"]["name"]
    pv = pvs.get(spec.get("volumeName") or "")
    notes = pvc["metadata"].get("annotations") or {}
    for key in ("pv.kubernetes.io/bind-completed", "pv.kubernetes.io/bound-by-controller"):
        notes.pop(key, None)
    if ctl.store.find(PVCS, ns, name) is not None:
        return 0  # skipped as existing: its PV (in use, same name) is not restored over it
    if not with_pvs:
        # the PV is never processed, so the claim keeps its volumeName (restore.go resets it only
        # for PVs in pvsToProvision) and waits for a PV that is not there
        return 0
    if pv is None or not restore_pvs or (src_ns, name) not in snap.volumes:
        spec.pop("volumeName", None)  # no snapshot: a new (empty) volume is provisioned
        return 0
    new_pv = _label(_reset(pv), rname, bname)
    there = ctl.store.find(PVS, "", new_pv["metadata"]["name"])
    if there is not None:
        if not mapped:
            # shouldRenamePV: renamed only for a remapped namespace; else shouldRestore looks at
            # the PV in the cluster: Released (reclaimPolicy Retain, its claim deleted), being
            # deleted, or claimed by a claim that is gone, it waits resourceTerminatingTimeout
            # (10 min by default; here at once) for it to go, then fails the item ("error waiting
            # on in-cluster persistentvolume"); else the PV is kept and no volume is made
            return int(_lingering(ctl, there))
        new_pv["metadata"]["name"] = f"velero-clone-{uuid.uuid4()}"
    new_pv["spec"]["claimRef"] = {"kind": "PersistentVolumeClaim", "namespace": ns, "name": name}
    ctl.store.create(PVS, "", new_pv)
    spec["volumeName"] = new_pv["metadata"]["name"]
    ctl.volumes[(ns, name)] = snap.volumes[(src_ns, name)]
    return 0


def _lingering(ctl, pv: dict[str, Any]) -> bool:
    """restore.go shouldRestore's "wait for it to go away" cases."""
    if (pv.get("status") or {}).get("phase") == "Released" or pv["metadata"].get("deletionTimestamp"):
        return True
    ref = (pv.get("spec") or {}).get("claimRef")
    return bool(ref) and ctl.store.find(PVCS, ref.get("namespace", ""), ref.get("name", "")) is None


def _service(svc: dict[str, Any], preserve_node_ports: bool) -> None:
    spec = svc.setdefault("spec", {})
    if spec.get("clusterIP") != "None":
        spec.pop("clusterIP", None)
        spec.pop("clusterIPs", None)
    if not preserve_node_ports:
        spec.pop("healthCheckNodePort", None)
        for port in spec.get("ports") or []:
            port.pop("nodePort", None)


def _restore_wait(pod: dict[str, Any], src_ns: str, src_pod: str, snap: Snapshot) -> None:
    """actions/pod_volume_restore_action.go: a pod with volumes to restore gets the restore-wait
    init container first, with the securityContext of its first container (or a restricted one),
    mounting those volumes; it runs before the resource modifiers."""
    spec = pod.setdefault("spec", {})
    volumes = [v for v, _ in claims_of(pod) if (src_ns, src_pod, v) in snap.pod_volumes]
    if not volumes:
        return
    first = (spec.get("containers") or [{}])[0]
    context = copy.deepcopy(first.get("securityContext")) or {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsUser": 1000,  # restoreHelperUID
        "runAsNonRoot": True,
    }
    wait = {
        "name": "restore-wait",
        "image": "velero/velero-restore-helper:v1.16.0",
        "command": ["/velero-restore-helper"],
        "securityContext": context,
        "volumeMounts": [{"name": v, "mountPath": f"/restores/{v}"} for v in volumes],
    }
    spec["initContainers"] = [wait, *(spec.get("initContainers") or [])]


def _pod_volumes(ctl, pod: dict[str, Any], src_ns: str, src_pod: str, snap: Snapshot, rname: str) -> None:
    ns = pod["metadata"]["namespace"]
    for volume, claim in claims_of(pod):
        data = snap.pod_volumes.get((src_ns, src_pod, volume))
        if data is None:
            continue
        pvr = ctl.store.create(
            PVRS,
            ctl.namespace,
            {
                "metadata": {
                    "generateName": f"{rname[:50]}-",
                    "labels": {"velero.io/restore-name": _valid(rname)},
                },
                "spec": {
                    "pod": {
                        "kind": "Pod",
                        "namespace": ns,
                        "name": pod["metadata"]["name"],
                        "uid": pod["metadata"]["uid"],
                    },
                    "volume": volume,
                    "uploaderType": "kopia",
                },
            },
        )
        ctl.pod_volume_data[pvr["metadata"]["name"]] = (ns, pod["metadata"]["uid"], claim, data)


def _pod_volume_restores(ctl, restore: dict[str, Any]) -> None:
    """The restore-wait init container: the data lands once the restored pod runs; a pod that is
    gone before that fails its PodVolumeRestore (and the restore is PartiallyFailed)."""
    rname = restore["metadata"]["name"]
    errors = (restore.get("status") or {}).get("errors", 0)
    pending = 0
    for pvr in ctl.store.list(PVRS, ctl.namespace, f"velero.io/restore-name={_valid(rname)}"):
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


def _modifiers(ctl, ref: dict[str, Any] | None) -> list:
    if not ref:
        return []
    cm = ctl.store.get(CONFIGMAPS, ctl.namespace, ref["name"])
    doc = yaml.safe_load(next(iter(cm["data"].values())))
    rules = []
    for rule in doc.get("resourceModifierRules") or []:
        cond = rule.get("conditions") or {}
        ops = [
            {"op": p["operation"], "path": p["path"], "value": _velero_value(p.get("value", ""))}
            for p in rule.get("patches") or []
        ]

        def apply(res, ns, obj, cond=cond, ops=ops):
            if cond.get("groupResource") not in resource_names(res):
                return obj
            if cond.get("namespaces") and ns not in cond["namespaces"]:
                return obj
            if not re.search(cond.get("resourceNameRegex", ".*"), obj["metadata"]["name"]):
                return obj
            return json_patch(obj, ops)

        rules.append(apply)
    return rules


def _velero_value(value: str) -> Any:
    """Velero's JSONPatch.ToString: numbers, booleans, null, objects and arrays go in unquoted."""
    if value in ("null", "true", "false") or value[:1] in ("{", "["):
        return json.loads(value)
    try:
        return json.loads(value) if value and float(value) is not None else value
    except ValueError:
        return value
