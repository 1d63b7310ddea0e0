"""The fake Velero's restore of single items, as pkg/restore/restore.go and its item actions
(pkg/restore/actions/) do it: metadata reset, existing objects compared, completed pods
skipped, a claim's PV from its snapshot, services' allocated fields, pods' restore-wait init
container and PodVolumeRestores. The restore's phases and order are in velero_restore.py."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from sandbox.k8s_emulator.controllers import claims_of
from sandbox.k8s_emulator.snapshot import PVCS, PVRS, PVS, Snapshot
from sandbox.k8s_emulator.store import Resource

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# restore.go resetMetadata: the only metadata a restored object loses
SERVER_METADATA = frozenset(
    {
        "generateName",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "ownerReferences",
    }
)


def reset(obj: dict[str, Any]) -> dict[str, Any]:
    """resetMetadataAndStatus: status and the metadata the server sets go; the rest stays,
    finalizers included (restore.go resetMetadata deletes only these keys)."""
    new = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    new["metadata"] = {k: v for k, v in new["metadata"].items() if k not in SERVER_METADATA}
    new["metadata"].pop("namespace", None)
    return new


def identical(existing: dict[str, Any], new: dict[str, Any]) -> bool:
    """restore.go: the in-cluster object, reset as the backed-up one was and given the same
    restore labels, equals what would be restored: "skipped: it already exists in the cluster
    and is the same as the backed up version", no warning."""
    cluster = reset(existing)
    ours = {k: v for k, v in (new["metadata"].get("labels") or {}).items() if k.startswith("velero.io/")}
    cluster["metadata"].setdefault("labels", {}).update(ours)
    return cluster == new


def merged_account(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """restore.go mergeServiceAccounts: what a ServiceAccount that exists is patched with, or None
    when it differs from the backed-up one in nothing a merge adds. Whatever the policy, the
    backed-up `secrets` and `imagePullSecrets` it lacks (by name) are appended to its own, and
    labels and annotations it lacks are added (its own values win). The patch is the difference
    from the in-cluster object given the restore labels (merge_service_account.go
    generatePatch), so those labels are not written."""
    cluster = reset(existing)
    ours = {k: v for k, v in (new["metadata"].get("labels") or {}).items() if k.startswith("velero.io/")}
    cluster["metadata"].setdefault("labels", {}).update(ours)
    patch: dict[str, Any] = {}
    for field in ("secrets", "imagePullSecrets"):
        have = list(cluster.get(field) or [])
        names = {ref.get("name") for ref in have}
        added = [ref for ref in new.get(field) or [] if ref.get("name") not in names]
        if added:
            patch[field] = have + added
    for part in ("labels", "annotations"):
        have = cluster["metadata"].get(part) or {}
        added = {k: v for k, v in (new["metadata"].get(part) or {}).items() if k not in have}
        if added:
            patch.setdefault("metadata", {})[part] = added
    return patch or None


def completed(res: Resource, obj: dict[str, Any]) -> bool:
    """restore.go isCompleted: a pod that Succeeded or Failed is not restored."""
    return res.plural == "pods" and (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def label(obj: dict[str, Any], restore_name: str, backup_name: str) -> dict[str, Any]:
    """addRestoreLabels, which restore.go calls after the resource modifiers: a modifier that
    replaces an object's labels does not take these away."""
    obj["metadata"].setdefault("labels", {}).update(
        {"velero.io/backup-name": valid_name(backup_name), "velero.io/restore-name": valid_name(restore_name)}
    )
    return obj


def valid_name(name: str) -> str:
    """label.GetValidName: at most 63 characters (longer names: 57 + a hash)."""
    return name if len(name) <= 63 else name[:57] + format(abs(hash(name)) % 16**6, "06x")


def claim(ctl, pvc, src_ns, ns, snap, pvs, restore_pvs, rname, bname, with_pvs, mapped) -> int:
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
    new_pv = label(reset(pv), rname, bname)
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


def service(svc: dict[str, Any], preserve_node_ports: bool) -> None:
    """actions/service_action.go: the cluster IPs go (unless headless); unless preserveNodePorts,
    the nodePorts go but those the user fixed: with a last-applied-configuration (`kubectl
    apply`), those it names (a named port by name, an unnamed one by value); without one, those
    a managedFields entry owns (`kubectl apply --server-side`: `f:nodePort` under the port's key
    `k:{"port":N,"protocol":"P"}`). An ExternalName service keeps its own. healthCheckNodePort
    goes for a LoadBalancer with externalTrafficPolicy Local unless the last-applied-configuration
    has it (non-zero) or a managedFields entry owns it."""
    spec = svc.setdefault("spec", {})
    if spec.get("clusterIP") != "None":
        spec.pop("clusterIP", None)
        spec.pop("clusterIPs", None)
    if preserve_node_ports:
        return
    notes = svc["metadata"].get("annotations") or {}
    last = json.loads(notes[LAST_APPLIED]) if LAST_APPLIED in notes else None
    owned = [
        (e.get("fieldsV1") or {}).get("f:spec") or {} for e in svc["metadata"].get("managedFields") or []
    ]
    asked = (last or {}).get("spec") or {}
    if (
        spec.get("type") == "LoadBalancer"
        and spec.get("externalTrafficPolicy") == "Local"
        and not asked.get("healthCheckNodePort")
        and not any("f:healthCheckNodePort" in fields for fields in owned)
    ):
        spec.pop("healthCheckNodePort", None)
    if spec.get("type") == "ExternalName":
        return
    if last is not None:
        fixed = [p for p in asked.get("ports") or [] if p.get("nodePort")]
        named = {p["name"] for p in fixed if p.get("name")}
        unnamed = {int(p["nodePort"]) for p in fixed if not p.get("name")}
        for port in spec.get("ports") or []:
            if not (port.get("name") in named if port.get("name") else port.get("nodePort") in unnamed):
                port.pop("nodePort", None)
        return
    keys = {
        key
        for fields in owned
        for key, entry in (fields.get("f:ports") or {}).items()
        if isinstance(entry, dict) and "f:nodePort" in entry
    }
    for port in spec.get("ports") or []:
        if port_key(port) not in keys:
            port.pop("nodePort", None)


def port_key(port: dict[str, Any]) -> str:
    """service_action.go portKey: a port's key in managedFields (protocol defaults to TCP)."""
    return f'k:{{"port":{port.get("port")},"protocol":"{port.get("protocol") or "TCP"}"}}'


def restore_wait(pod: dict[str, Any], src_ns: str, src_pod: str, snap: Snapshot) -> None:
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


def pod_volumes(ctl, pod: dict[str, Any], src_ns: str, src_pod: str, snap: Snapshot, rname: str) -> None:
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
                    "labels": {"velero.io/restore-name": valid_name(rname)},
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
