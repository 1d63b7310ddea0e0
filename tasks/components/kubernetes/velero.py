"""Velero's API as the `velero` CLI drives it: preflight, create, wait for a terminal phase, cancel."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from typing import Any

from blocks.kubernetes import VeleroTarget
from tasks.components.kubernetes.api import Kube, connect
from tasks.errors import (
    BackupError,
    BadInput,
    ComponentFailed,
    ConfigurationError,
    NotFound,
    target_untouched,
)
from tasks.storage.progress import interval_seconds

log = logging.getLogger(__name__)
GROUP, VERSION = "velero.io", "v1"
BACKUP_TERMINAL = {"Completed", "PartiallyFailed", "Failed", "FailedValidation", "Deleting"}
RESTORE_TERMINAL = {"Completed", "PartiallyFailed", "Failed", "FailedValidation"}
# resourceModifier and snapshotMoveData (Restore/Backup spec) came with Velero 1.12
MIN_VELERO = "1.12"
NOT_INSTALLED = (
    "Velero is not installed on this cluster (no velero.io/v1 API): install Velero "
    "(`velero install ...`, or its Helm chart) and check `kubectl get crd backups.velero.io`"
)


# Object names the API server accepts (lowercase RFC 1123) and that fit a label value (<= 63), as
# Velero puts backup and restore names into labels (velero.io/backup-name, velero.io/restore-name).
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
BACKUP_ID_KEY = "klb.io/backup-id"


def object_name(text: str, limit: int = 63) -> str:
    """`text` as a Kubernetes object name: lower case, other characters as '-', at most `limit`
    long (a long one keeps a hash of the whole, so two long names stay distinct)."""
    name = re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.")
    if len(name) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        name = f"{name[: limit - 7].rstrip('-.')}-{digest}"
    return name or "x"


def id_metadata(backup_id: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Labels and annotations that tie an object to our backup id: the id itself as an annotation
    (any length and case), and as a label too when it is a valid label value."""
    labels = dict(labels or {})
    if not backup_id:
        return {"labels": labels}
    if len(backup_id) <= 63 and LABEL_VALUE_RE.fullmatch(backup_id):
        labels[BACKUP_ID_KEY] = backup_id
    return {"labels": labels, "annotations": {BACKUP_ID_KEY: backup_id}}


def _call(k: Kube, what: str, verb: str, plural: str, namespace: str, *args: Any, **kwargs: Any) -> Any:
    fn = getattr(k.custom, f"{verb}_namespaced_custom_object")
    if verb == "create":
        # Strict: a field Velero's installed CRDs do not declare (an older Velero: no
        # resourceModifier before 1.12) is refused, not silently pruned (the server's default),
        # which would run a drill's apps at full scale or restore without the asked-for policy
        kwargs.setdefault("field_validation", "Strict")
    try:
        return k.call(what, fn, GROUP, VERSION, namespace, plural, *args, **kwargs)
    except NotFound as exc:
        if "could not find the requested resource" in str(exc):
            raise ConfigurationError(f"{what}: {NOT_INSTALLED}") from None
        raise
    except BadInput as exc:
        if "strict decoding error" in str(exc):
            raise ConfigurationError(
                f"{exc}. Velero's CRDs on this cluster are older than "
                f"this project needs (Velero >= {MIN_VELERO}): upgrade Velero and its CRDs "
                "(`velero install --crds-only --dry-run -o yaml | kubectl apply -f -`); nothing was created"
            ) from None
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


def pod_volume_backups(k: Kube, target: VeleroTarget, name: str) -> list[dict[str, Any]]:
    """The PodVolumeBackups of backup `name`: one per volume file-system backup read."""
    return _call(
        k,
        f"list PodVolumeBackups of {name}",
        "list",
        "podvolumebackups",
        target.namespace,
        label_selector=f"velero.io/backup-name={name}",
    )["items"]


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

    Velero deletes the request itself once the backup is gone (backup_deletion_controller.go:
    "Everything deleted correctly, so we can delete all DeleteBackupRequests for this backup"),
    so its disappearance, with the backup gone, is the success; a request left Processed carries
    Velero's errors. Velero refuses to delete a backup that is still InProgress."""
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
            "metadata": {
                "generateName": f"{name[:50].rstrip('-.')}-",
                "labels": {"velero.io/backup-name": name},
            },
            "spec": {"backupName": name},
        },
    )
    request = dbr["metadata"]["name"]
    deadline = time.monotonic() + (timeout or 60)
    errors: list[str] = []
    while True:
        try:
            dbr = _call(
                k,
                f"read DeleteBackupRequest {request}",
                "get",
                "deletebackuprequests",
                target.namespace,
                request,
            )
        except NotFound:
            dbr = None
        st = (dbr or {}).get("status") or {}
        if dbr is not None and st.get("phase") == "Processed" and st.get("errors"):
            errors = st["errors"]
            break
        if dbr is None or st.get("phase") == "Processed":
            # removed by Velero (or about to be: Processed without errors): the backup must be gone
            try:
                get_backup_cr(k, target, name)
            except NotFound:
                return {"backup": name, "deleted": True, "request": request}
            if dbr is None:
                errors = ["the request was removed but the backup is still there"]
                break
        if time.monotonic() >= deadline:
            break
        time.sleep(target.poll_interval_seconds)
    said = "; ".join(errors) if errors else "no answer (is the Velero server running?)"
    raise ComponentFailed(
        f"Velero did not delete backup {name}: {said}. A backup stuck InProgress is only released "
        f"by restarting Velero (`kubectl -n {target.namespace} rollout restart deployment/velero`), "
        f"which marks it Failed; then run cancel_backup again"
    )


def run_restore(
    k: Kube,
    target: VeleroTarget,
    backup_name: str,
    spec: dict[str, Any],
    timeout: float | None,
    backup_id: str = "",
) -> dict[str, Any]:
    """Create a Restore, wait for it; anything but Completed raises with Velero's own words."""
    name = f"{object_name(backup_name, 48)}-r{secrets.token_hex(3)}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Restore",
        "metadata": {"name": name, "namespace": target.namespace, **id_metadata(backup_id)},
        "spec": spec,
    }
    try:
        _call(k, f"create Velero restore {name}", "create", "restores", target.namespace, body)
    except BackupError as exc:  # refused (RBAC, a webhook, a bad spec): Velero restored nothing
        raise target_untouched(exc) from None
    log.info("created Velero restore %s from %s", name, backup_name)
    limit = timeout or target.restore_timeout_seconds
    cr, done = _wait(k, target, "restores", name, RESTORE_TERMINAL, limit)
    if not done:
        raise ComponentFailed(
            f"Velero restore {name} did not finish within {limit:.0f}s ({_status_text(cr)}): it may still "
            f"be changing the cluster. Watch `velero restore describe {name}` and check the namespaces"
        )
    phase, errors = cr["status"]["phase"], cr["status"].get("errors") or 0
    if phase != "Completed" or errors:
        failed = ComponentFailed(
            f"Velero restore {name} ended {phase} with {errors} errors ({_status_text(cr)}): the restore "
            f"is incomplete. List them with `velero restore describe {name} --details` and "
            f"`velero restore logs {name}`, fix the cause, then restore again"
        )
        failed.velero_restore = name  # it ended: what it wrote can be told (restores.py)
        raise failed
    return cr
