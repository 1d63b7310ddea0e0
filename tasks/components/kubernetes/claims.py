"""Volumes in a Velero restore: data restored through pods, and claims waited for until bound.

File-system backup data comes back only through a restored pod that mounts the volume (Velero
adds its `restore-wait` init container and a PodVolumeRestore to it). When the apps must stay
down (a data-corruption restore, a drill), their pods are restored as *helpers*: a resource
modifier takes their labels (so no ReplicaSet adopts and kills them, no Service routes to
them) and swaps their containers for a pause container (so the app does not run); they are
deleted once Velero reports the restore Completed, which it does only after every
PodVolumeRestore has finished.

Restored claims are then waited for until Bound, except those of a WaitForFirstConsumer class
that no pod uses yet: they bind when the apps start (kubernetes.io/docs/concepts/storage/
storage-classes/#volume-binding-mode).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import yaml

from blocks.kubernetes import VeleroTarget
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes.api import Kube
from tasks.errors import ComponentFailed, ConfigurationError, NotFound, TransientError

log = logging.getLogger(__name__)
HELPER_LABEL = "klb.io/restore-helper"
PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
# Velero creates the helpers in the app's namespace, where Pod Security admission applies: a
# container without these is refused by "restricted" (and the restore ends PartiallyFailed).
# pause runs as 65535 (its image's USER), never as root.
HELPER_CONTAINER = {
    "name": "hold",
    "image": PAUSE_IMAGE,
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": 65535,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


def helper_pod_rules(token: str) -> list[dict[str, Any]]:
    """Velero resource-modifier rules that turn every restored pod into a volume-restore helper."""
    return [
        {
            "conditions": {"groupResource": "pods", "resourceNameRegex": ".*"},
            "patches": [
                {
                    "operation": "replace",
                    "path": "/metadata/labels",
                    "value": f'{{"{HELPER_LABEL}": "{token}"}}',
                },
                {
                    "operation": "replace",
                    "path": "/spec/containers",
                    "value": json.dumps([HELPER_CONTAINER]),
                },
            ],
        }
    ]


@contextlib.contextmanager
def resource_modifier(k: Kube, target: VeleroTarget, rules: list[dict[str, Any]]) -> Iterator[dict[str, str]]:
    """A resource-modifier ConfigMap in Velero's namespace for one restore; removed afterwards."""
    name = f"klb-modifier-{secrets.token_hex(4)}"
    doc = {"version": "v1", "resourceModifierRules": rules}
    k.call(
        f"create ConfigMap {name}",
        k.core.create_namespaced_config_map,
        target.namespace,
        {"metadata": {"name": name}, "data": {"rules.yaml": yaml.safe_dump(doc)}},
    )
    try:
        yield {"kind": "ConfigMap", "name": name}
    finally:
        try:
            k.call(f"delete ConfigMap {name}", k.core.delete_namespaced_config_map, name, target.namespace)
        except Exception as exc:  # a leftover ConfigMap is harmless; the restore's outcome is what counts
            log.warning("resource modifier %s: %s", name, exc)


# a pod name no restore makes: a dry-run delete of it asks RBAC, and deletes nothing
PERMISSION_PROBE = "klb-helper-delete-check"


def check_helpers_removable(k: Kube, namespaces: list[str]) -> None:
    """Before a restore that brings helper pods into `namespaces`: may this account delete pods
    there? Asked of the API server as a dry-run delete (authorization comes before the 404 of a pod
    that is not there). Without it Velero put the helpers in, their removal was refused, and the
    restore stopped half done with the helpers holding the claims."""
    for ns in namespaces:
        try:
            k.call(f"delete pods in {ns}", k.core.delete_namespaced_pod, PERMISSION_PROBE, ns, dry_run="All")
        except NotFound:
            continue  # allowed: no such pod, nothing deleted
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"{exc}. A file-system volume restore into {ns} deletes the helper pods it puts there "
                f"once their data is in: bind the ClusterRole klb-flow-runner-apps in {ns} with a "
                "RoleBinding (deployments/k8s/rbac.yaml), then run the restore again"
            ) from None


def remove_helpers(k: Kube, target: VeleroTarget, namespaces: list[str], token: str, timeout: float) -> None:
    """Delete the helper pods of one restore and wait until they are gone (their claims are
    ReadWriteOnce: the apps can mount them only then)."""
    selector = f"{HELPER_LABEL}={token}"

    def left() -> list[tuple[str, str]]:
        return [
            (ns, p.metadata.name)
            for ns in namespaces
            if kube.namespace_exists(k, ns)
            for p in k.call(
                f"list helper pods in {ns}", k.core.list_namespaced_pod, ns, label_selector=selector
            ).items
        ]

    for ns, name in left():
        with contextlib.suppress(NotFound):
            k.call(f"delete helper pod {ns}/{name}", k.core.delete_namespaced_pod, name, ns)
    kube.wait_for(
        lambda: not left(), timeout, target.poll_interval_seconds, "the restore's helper pods to go"
    )


def _waits_for_consumer(k: Kube, storage_class: str | None, cache: dict[str, bool]) -> bool:
    if not storage_class:
        return False
    if storage_class not in cache:
        try:
            cls = k.call(
                f"read StorageClass {storage_class}",
                k.storage.read_storage_class,
                storage_class,
            )
            cache[storage_class] = cls.volume_binding_mode == "WaitForFirstConsumer"
        except NotFound as exc:  # a class that is gone binds nothing new: wait and say so
            log.warning("storage class %s: %s", storage_class, exc)
            cache[storage_class] = False
    return cache[storage_class]


def wait_bound(
    k: Kube, target: VeleroTarget, claims: list[tuple[str, str]], timeout: float
) -> dict[str, Any]:
    """Wait until the restored claims are Bound -> {"bound": [...], "waiting_for_first_consumer": [...]}.
    A claim that does not bind in time is a failure that names it."""
    cache: dict[str, bool] = {}
    consumer: list[str] = []
    pending = dict.fromkeys(claims)

    def check() -> bool:
        for ns, name in list(pending):
            pvc = k.call(f"read PVC {ns}/{name}", k.core.read_namespaced_persistent_volume_claim, name, ns)
            phase = pvc.status.phase if pvc.status else None
            # every claim's binding mode is read (once per class), so a missing permission shows
            # on the first restore, not only on the day a claim waits for its first consumer
            waits = _waits_for_consumer(k, pvc.spec.storage_class_name, cache)
            if phase == "Bound":
                del pending[(ns, name)]
            elif phase == "Pending" and not pvc.spec.volume_name and waits:
                consumer.append(f"{ns}/{name}")
                del pending[(ns, name)]
        return not pending

    try:
        kube.wait_for(check, timeout, target.poll_interval_seconds, "the restored PVCs to bind")
    except TransientError:
        stuck = sorted(f"{ns}/{name}" for ns, name in pending)
        raise ComponentFailed(
            f"restored PVCs {stuck} did not bind within {timeout:.0f}s: check `kubectl describe pvc` "
            "(storage class, provisioner, quota) before starting the apps"
        ) from None
    if consumer:
        log.info(
            "PVCs %s wait for their first consumer (WaitForFirstConsumer): they bind when the apps start",
            consumer,
        )
    return {
        "bound": sorted(f"{ns}/{name}" for ns, name in claims if f"{ns}/{name}" not in consumer),
        "waiting_for_first_consumer": sorted(consumer),
    }
