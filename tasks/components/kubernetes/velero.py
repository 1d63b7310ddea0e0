"""Velero's API as the `velero` CLI drives it: preflight, create, wait for a terminal phase, cancel."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from blocks.kubernetes import VeleroTarget
from tasks.components.kubernetes.api import Kube, connect
from tasks.errors import ComponentFailed, ConfigurationError, NotFound
from tasks.storage.progress import interval_seconds

log = logging.getLogger(__name__)
GROUP, VERSION = "velero.io", "v1"
BACKUP_TERMINAL = {"Completed", "PartiallyFailed", "Failed", "FailedValidation", "Deleting"}
RESTORE_TERMINAL = {"Completed", "PartiallyFailed", "Failed", "FailedValidation"}
NOT_INSTALLED = (
    "Velero is not installed on this cluster (no velero.io/v1 API): install Velero "
    "(`velero install ...`, or its Helm chart) and check `kubectl get crd backups.velero.io`"
)


def _call(k: Kube, what: str, verb: str, plural: str, namespace: str, *args: Any, **kwargs: Any) -> Any:
    fn = getattr(k.custom, f"{verb}_namespaced_custom_object")
    try:
        return k.call(what, fn, GROUP, VERSION, namespace, plural, *args, **kwargs)
    except NotFound as exc:
        if "could not find the requested resource" in str(exc):
            raise ConfigurationError(f"{what}: {NOT_INSTALLED}") from None
        raise


def preflight(k: Kube, target: VeleroTarget) -> dict[str, Any]:
    """Velero installed, its storage location present and Available: else a clear error, before
    anything is created."""
    try:
        bsl = _call(
            k,
            f"read BackupStorageLocation {target.storage_location}",
            "get",
            "backupstoragelocations",
            target.namespace,
            target.storage_location,
        )
    except NotFound:
        raise ConfigurationError(
            f"Velero has no BackupStorageLocation {target.storage_location!r} in namespace "
            f"{target.namespace!r}: check `velero backup-location get` and the block's storage_location"
        ) from None
    phase = (bsl.get("status") or {}).get("phase")
    if phase and phase != "Available":
        raise ConfigurationError(
            f"Velero's BackupStorageLocation {target.storage_location!r} is {phase}: "
            f"{(bsl.get('status') or {}).get('message', 'see `velero backup-location get`')}"
        )
    return bsl


def get_backup_cr(k: Kube, target: VeleroTarget, name: str) -> dict[str, Any]:
    try:
        return _call(k, f"read Velero backup {name}", "get", "backups", target.namespace, name)
    except NotFound:
        raise NotFound(
            f"Velero has no backup {name!r} in namespace {target.namespace!r} (expired by its TTL, "
            "deleted, or another cluster): list them with `velero backup get`; pick another backup"
        ) from None


def _wait(
    k: Kube, target: VeleroTarget, plural: str, name: str, terminal: set[str], timeout: float
) -> tuple[dict[str, Any], bool]:
    """Poll until a terminal phase; -> (object, finished). Logs phase and item progress when they
    change, at most every KLB_PROGRESS_SECONDS, so a long wait is not silent until its timeout."""
    deadline = time.monotonic() + timeout
    said, said_at = "", 0.0
    while True:
        obj = _call(k, f"read Velero {plural} {name}", "get", plural, target.namespace, name)
        phase = (obj.get("status") or {}).get("phase")
        text = _status_text(obj)
        if text != said and time.monotonic() - said_at >= interval_seconds():
            log.info("Velero %s %s: %s", plural.rstrip("s"), name, text)
            said, said_at = text, time.monotonic()
        if phase in terminal:
            return obj, True
        if time.monotonic() >= deadline:
            return obj, False
        time.sleep(target.poll_interval_seconds)


def _status_text(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    parts = [f"phase={st.get('phase') or 'New'}"]
    if st.get("progress"):
        prog = st["progress"]
        done = prog.get("itemsBackedUp", prog.get("itemsRestored"))
        parts.append(f"items={done}/{prog.get('totalItems')}")
    for key in ("errors", "warnings"):
        if st.get(key):
            parts.append(f"{key}={st[key]}")
    if st.get("failureReason"):
        parts.append(f"failureReason={st['failureReason']!r}")
    if st.get("validationErrors"):
        parts.append(f"validationErrors={st['validationErrors']}")
    return ", ".join(parts)


def cancel_backup(target: VeleroTarget, name: str, timeout: float | None = None) -> dict[str, Any]:
    """Ask Velero to delete a backup (what `velero backup delete` does): a DeleteBackupRequest.

    Velero refuses to delete a backup that is still InProgress; the error says what to do then."""
    k = connect(target.kube)
    dbr = _call(
        k,
        f"create DeleteBackupRequest for {name}",
        "create",
        "deletebackuprequests",
        target.namespace,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DeleteBackupRequest",
            "metadata": {"generateName": f"{name[:50]}-", "labels": {"velero.io/backup-name": name[:63]}},
            "spec": {"backupName": name},
        },
    )
    dbr, done = _wait(
        k, target, "deletebackuprequests", dbr["metadata"]["name"], {"Processed"}, timeout or 60
    )
    errors = (dbr.get("status") or {}).get("errors") or []
    if not done or errors:
        said = "; ".join(errors) if errors else "no answer (is the Velero server running?)"
        raise ComponentFailed(
            f"Velero did not delete backup {name}: {said}. A backup stuck InProgress is only released "
            f"by restarting Velero (`kubectl -n {target.namespace} rollout restart deployment/velero`), "
            f"which marks it Failed; then run cancel_backup again"
        )
    return {"backup": name, "deleted": True, "request": dbr["metadata"]["name"]}


def run_restore(
    k: Kube,
    target: VeleroTarget,
    backup_name: str,
    spec: dict[str, Any],
    timeout: float | None,
    backup_id: str = "",
) -> dict[str, Any]:
    """Create a Restore, wait for it; anything but Completed raises with Velero's own words."""
    name = f"{backup_name[:48]}-r{secrets.token_hex(3)}"
    labels = {"klb.io/backup-id": backup_id[:63]} if backup_id else {}
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Restore",
        "metadata": {"name": name, "namespace": target.namespace, "labels": labels},
        "spec": spec,
    }
    _call(k, f"create Velero restore {name}", "create", "restores", target.namespace, body)
    log.info("created Velero restore %s from %s", name, backup_name)
    limit = timeout or target.restore_timeout_seconds
    cr, done = _wait(k, target, "restores", name, RESTORE_TERMINAL, limit)
    if not done:
        raise ComponentFailed(
            f"Velero restore {name} did not finish within {limit:.0f}s ({_status_text(cr)}): it may still "
            f"be changing the cluster. Watch `velero restore describe {name}` and check the namespaces"
        )
    phase = cr["status"]["phase"]
    if phase != "Completed":
        raise ComponentFailed(
            f"Velero restore {name} ended {phase} ({_status_text(cr)}). "
            f"See `velero restore describe {name} --details` and `velero restore logs {name}`"
        )
    return cr
