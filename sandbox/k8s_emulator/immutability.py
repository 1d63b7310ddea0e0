"""What an update may not change, per kind, as the API server's update validation refuses it (422).

- Pods (pkg/apis/core/validation/validation.go ValidatePodUpdate): the spec is immutable but for
  `containers[*].image`, `initContainers[*].image`, `activeDeadlineSeconds` (set, or lowered),
  `tolerations` (additions only), `terminationGracePeriodSeconds`, and removing
  `schedulingGates`; `nodeName` is set through the binding subresource only.
- PersistentVolumeClaims (ValidatePersistentVolumeClaimUpdate): the spec is immutable after
  creation except `resources.requests` (expansion) and `volumeName` while it is still empty
  (the binder sets it once).
- Services (ValidateServiceUpdate; pkg/registry/core/service/storage patchAllocatedValues): an
  update that leaves `clusterIP(s)` / a port's `nodePort` empty keeps what was allocated; one that
  asks for a different value is refused ("field is immutable").
- Deployments (apps/validation ValidateDeploymentUpdate, apps/v1): `spec.selector` is immutable.
- ConfigMaps and Secrets with `immutable: true` (ValidateConfigMapUpdate, ValidateSecretUpdate):
  `data`/`binaryData` may not change and `immutable` may not be unset; a Secret's `type` never
  changes (ValidateImmutableField; the server defaults it to Opaque, so an update without one
  asks for Opaque).
"""

from __future__ import annotations

import copy
from typing import Any

POD_MUTABLE = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions "
    "to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it "
    "was previously negative)"
)


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(obj.get("spec") or {})


def _pod(old: dict, new: dict) -> list[str]:
    before, after = _spec(old), _spec(new)
    causes = []
    for key in ("containers", "initContainers", "ephemeralContainers"):
        if key == "ephemeralContainers":  # its own subresource
            before.pop(key, None)
            after.pop(key, None)
            continue
        for a, b in zip(before.get(key) or [], after.get(key) or [], strict=False):
            a.pop("image", None)
            b.pop("image", None)
    old_ads, new_ads = before.pop("activeDeadlineSeconds", None), after.pop("activeDeadlineSeconds", None)
    if old_ads is not None and (new_ads is None or new_ads > old_ads):
        causes.append(f"spec.activeDeadlineSeconds: Invalid value: {new_ads}: must be <= {old_ads}")
    old_tol, new_tol = before.pop("tolerations", None) or [], after.pop("tolerations", None) or []
    if any(t not in new_tol for t in old_tol):
        causes.append(f"spec.tolerations: Forbidden: existing toleration can not be modified ({old_tol})")
    before.pop("terminationGracePeriodSeconds", None)
    after.pop("terminationGracePeriodSeconds", None)
    if not after.get("schedulingGates"):
        before.pop("schedulingGates", None)
        after.pop("schedulingGates", None)
    if before != after:
        causes.append(f"spec: Forbidden: {POD_MUTABLE}")
    return causes


def _pvc(old: dict, new: dict) -> list[str]:
    before, after = _spec(old), _spec(new)
    for spec in (before, after):
        (spec.get("resources") or {}).pop("requests", None)
        if not spec.get("resources"):
            spec.pop("resources", None)
    if not before.get("volumeName"):
        before.pop("volumeName", None)
        after.pop("volumeName", None)
    if before != after:
        return [
            "spec: Forbidden: spec is immutable after creation except resources.requests and "
            "volumeAttributesClassName for bound claims"
        ]
    return []


def _service(old: dict, new: dict) -> list[str]:
    before, after = old.get("spec") or {}, new.setdefault("spec", {})
    causes = []
    if before.get("clusterIP") and after.get("clusterIP") in (None, ""):
        after["clusterIP"] = before["clusterIP"]
    if before.get("clusterIPs") and not after.get("clusterIPs"):
        after["clusterIPs"] = copy.deepcopy(before["clusterIPs"])
    if before.get("clusterIP") and after.get("clusterIP") != before["clusterIP"]:
        causes.append(f'spec.clusterIP: Invalid value: "{after.get("clusterIP")}": field is immutable')
    old_ports = {(p.get("port"), p.get("protocol", "TCP")): p for p in before.get("ports") or []}
    if after.get("type", before.get("type")) in ("NodePort", "LoadBalancer"):
        for port in after.get("ports") or []:
            was = old_ports.get((port.get("port"), port.get("protocol", "TCP")))
            if was and was.get("nodePort") and not port.get("nodePort"):
                port["nodePort"] = was["nodePort"]
    return causes


def _deployment(old: dict, new: dict) -> list[str]:
    before, after = (old.get("spec") or {}).get("selector"), (new.get("spec") or {}).get("selector")
    if before is not None and after != before:
        return [f"spec.selector: Invalid value: {after}: field is immutable"]
    return []


def _immutable_data(old: dict, new: dict) -> list[str]:
    causes = []
    if old.get("type") != new.get("type"):  # a Secret's (defaulted to Opaque on every write)
        causes.append(f'type: Invalid value: "{new.get("type")}": field is immutable')
    if not old.get("immutable"):
        return causes
    if not new.get("immutable"):
        causes.append("immutable: Forbidden: field is immutable when `immutable` is set")
    for key in ("data", "binaryData"):
        if (old.get(key) or {}) != (new.get(key) or {}):
            causes.append(f"{key}: Forbidden: field is immutable when `immutable` is set")
    return causes


CHECKS = {
    "pods": _pod,
    "persistentvolumeclaims": _pvc,
    "services": _service,
    "deployments": _deployment,
    "configmaps": _immutable_data,
    "secrets": _immutable_data,
}


def update_errors(plural: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The causes of a 422 for replacing `old` by `new` (services: allocated values kept in `new`)."""
    check = CHECKS.get(plural)
    return check(old, new) if check else []
