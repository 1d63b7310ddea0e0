"""Pod Security admission, as the built-in PodSecurity plugin enforces it on pod create.

A namespace labelled `pod-security.kubernetes.io/enforce: restricted` (or `baseline`) refuses a
pod that breaks the level with 403 Forbidden, `violates PodSecurity "restricted:latest": ...`
(kubernetes.io/docs/concepts/security/pod-security-standards/; the checks are
k8s.io/pod-security-admission/policy/check_*.go). `pod_security_violations` is also what the
tests apply to the pod specs the project ships (the Job template, the worker's values).
"""

from __future__ import annotations

from typing import Any

ENFORCE = "pod-security.kubernetes.io/enforce"
# check_restrictedVolumes.go: the only volume sources "restricted" allows
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
BASELINE_CAPS = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for key in ("initContainers", "containers", "ephemeralContainers") for c in spec.get(key) or []]


def pod_security_violations(spec: dict[str, Any], level: str = "restricted") -> list[str]:
    """What a pod `spec` breaks at `level` ("baseline" or "restricted"); [] when admitted."""
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    containers = _containers(spec)
    # baseline (check_hostNamespaces, check_privileged, check_capabilities_baseline,
    # check_hostPathVolumes, check_hostPorts, check_seccompProfile_baseline)
    host = [k for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if host:
        out.append(f"host namespaces ({', '.join(host)}=true)")
    for c in containers:
        sc, name = c.get("securityContext") or {}, c.get("name")
        if sc.get("privileged"):
            out.append(f'privileged (container "{name}" must not set securityContext.privileged=true)')
        extra = set((sc.get("capabilities") or {}).get("add") or []) - BASELINE_CAPS
        if extra:
            out.append(f'non-default capabilities (container "{name}" must not include {sorted(extra)})')
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f'hostPort (container "{name}" uses hostPort)')
    if any("hostPath" in v for v in spec.get("volumes") or []):
        out.append("hostPath volumes")
    profiles = [pod_sc.get("seccompProfile")] + [
        (c.get("securityContext") or {}).get("seccompProfile") for c in containers
    ]
    if any((p or {}).get("type") == "Unconfined" for p in profiles):
        out.append("seccompProfile (type must not be Unconfined)")
    if level != "restricted":
        return out
    # restricted (check_restrictedVolumes, check_allowPrivilegeEscalation, check_runAsNonRoot,
    # check_runAsUser, check_seccompProfile_restricted, check_capabilities_restricted)
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"} - RESTRICTED_VOLUMES
        if kinds:
            out.append(f'restricted volume types (volume "{v.get("name")}" uses {sorted(kinds)})')
    for c in containers:
        sc, name = c.get("securityContext") or {}, c.get("name")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(
                f'allowPrivilegeEscalation != false (container "{name}" must set '
                "securityContext.allowPrivilegeEscalation=false)"
            )
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(
                f'runAsNonRoot != true (pod or container "{name}" must set securityContext.runAsNonRoot=true)'
            )
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            out.append(f'runAsUser=0 (container "{name}" must not set runAsUser=0)')
        profile = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
        if profile.get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(
                f'seccompProfile (pod or container "{name}" must set securityContext.seccompProfile.type '
                'to "RuntimeDefault" or "Localhost")'
            )
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(
                f'unrestricted capabilities (container "{name}" must set '
                'securityContext.capabilities.drop=["ALL"])'
            )
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(
                f'unrestricted capabilities (container "{name}" must not include '
                f"{sorted(set(caps['add']) - {'NET_BIND_SERVICE'})} in securityContext.capabilities.add)"
            )
    return out


def admit_pod(namespace: dict[str, Any] | None, pod: dict[str, Any]) -> str | None:
    """The 403 message for creating `pod` in `namespace`, or None when it is admitted."""
    level = ((namespace or {}).get("metadata", {}).get("labels") or {}).get(ENFORCE)
    if level not in ("baseline", "restricted"):
        return None
    found = pod_security_violations(pod.get("spec") or {}, level)
    if not found:
        return None
    name = pod["metadata"].get("name")
    return f'pods "{name}" is forbidden: violates PodSecurity "{level}:latest": ' + ", ".join(found)
