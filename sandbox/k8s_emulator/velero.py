"""A fake Velero server: a thread that drives Backup, Restore and DeleteBackupRequest objects.

It does what Velero does to the API objects, in-process: a Backup really snapshots the objects
of its included namespaces/resources (label selectors honoured) and the "volume data" of their
PVCs; a Restore really copies them into the (mapped) namespaces, skipping objects that exist
unless `existingResourcePolicy: update`, and applying resource modifiers. Failure modes are
injectable per test.
"""

from __future__ import annotations

import contextlib
import copy
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from sandbox.k8s_emulator.store import (
    BY_PATH,
    WORKLOAD,
    ApiError,
    ObjectStore,
    Resource,
    match_labels,
    now_iso,
)

VELERO = "velero.io/v1"
BACKUPS, RESTORES = BY_PATH[(VELERO, "backups")], BY_PATH[(VELERO, "restores")]
DBRS, PVBS = BY_PATH[(VELERO, "deletebackuprequests")], BY_PATH[(VELERO, "podvolumebackups")]
NAMESPACES, CONFIGMAPS = BY_PATH[("v1", "namespaces")], BY_PATH[("v1", "configmaps")]
PVCS = BY_PATH[("v1", "persistentvolumeclaims")]
ALIASES = {"pvc": "persistentvolumeclaims", "cm": "configmaps", "svc": "services", "deploy": "deployments"}
TERMINAL = {"Completed", "PartiallyFailed", "Failed", "FailedValidation"}


def _resource_names(res: Resource) -> set[str]:
    return {res.plural, res.group_resource, res.kind.lower()}


def _wanted(res: Resource, include: list[str] | None, exclude: list[str] | None) -> bool:
    def hit(names: list[str]) -> bool:
        return any(n == "*" or ALIASES.get(n, n) in _resource_names(res) for n in names)

    return (not include or hit(include)) and not (exclude and hit(exclude))


def _ns_wanted(ns: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    return (not include or "*" in include or ns in include) and not (exclude and ns in exclude)


@dataclass
class Snapshot:
    """What Velero would keep in its object storage for one backup."""

    items: list[tuple[Resource, dict[str, Any]]] = field(default_factory=list)
    volumes: dict[tuple[str, str], str] = field(default_factory=dict)


class VeleroController:
    """Failure switches: `backup_outcome` / `restore_outcome` = None (succeed), 'PartiallyFailed',
    'Failed' or 'stuck' (stays InProgress); `restore_errors` = N item errors on a restore (phase
    Completed unless restore_outcome says otherwise). `installed=False` makes velero.io paths 404."""

    def __init__(self, store: ObjectStore, namespace: str = "velero", tick: float = 0.01):
        self.store = store
        self.namespace = namespace
        self.tick = tick
        self.snapshots: dict[str, Snapshot] = {}
        self.volumes: dict[tuple[str, str], str] = {}  # (namespace, pvc) -> the volume's "content"
        self.backup_outcome: str | None = None
        self.restore_outcome: str | None = None
        self.restore_errors = 0  # > 0: restores report that many item errors (with restore_outcome's phase)
        self.installed = True
        self.denied: set[tuple[str, str]] = set()  # (verb, resource[/subresource])
        self.writes: list[tuple[str, str]] = []  # (method, path) of every mutating request
        self.secret_reads: list[str] = []  # Secret lists that returned data (not metadata only)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-velero", daemon=True)

    # -- test controls -----------------------------------------------------------------------
    def reset(self) -> None:
        self.backup_outcome = self.restore_outcome = None
        self.restore_errors = 0
        self.installed = True
        self.denied.clear()

    def deny(self, verb: str, resource: str) -> None:
        """Answer 403 to `verb` ('get', 'list', 'create', 'update', 'patch', 'delete') on `resource`
        ('deployments/scale', 'backups', ...), as RBAC would."""
        self.denied.add((verb, resource))

    def restart_velero(self) -> None:
        """What a Velero server restart does: backups left InProgress are marked Failed."""
        for backup in self.store.list(BACKUPS, self.namespace):
            if (backup.get("status") or {}).get("phase") == "InProgress":
                self._set_status(
                    BACKUPS,
                    backup,
                    phase="Failed",
                    failureReason="found a backup with status "
                    '"InProgress" during the server starting, mark it as "Failed"',
                )

    def seed_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.store.create(NAMESPACES, "", {"metadata": {"name": name, "labels": labels or {}}})

    def seed_deployment(self, namespace: str, name: str, replicas: int, labels: dict | None = None) -> dict:
        labels = {"app": name, **(labels or {})}
        return self.seed(
            "apps/v1",
            "deployments",
            namespace,
            {
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": name, "image": f"registry.local/{name}:1"}]},
                    },
                },
            },
        )

    def seed_pvc(
        self, namespace: str, name: str, content: str | None = None, labels: dict | None = None
    ) -> dict:
        """A bound PVC; `content` is what its volume holds (backed up by snapshots / fs-backup)."""
        if content is not None:
            self.volumes[(namespace, name)] = content
        return self.seed(
            "v1",
            "persistentvolumeclaims",
            namespace,
            {
                "metadata": {"name": name, "labels": labels or {}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": "standard",
                    "volumeName": f"pv-{namespace}-{name}",
                },
                "status": {"phase": "Bound"},
            },
        )

    def seed(self, group_version: str, plural: str, namespace: str, obj: dict[str, Any]) -> dict:
        return self.store.create(BY_PATH[(group_version, plural)], namespace, obj)

    # -- the controller loop -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self._reconcile()
            except Exception as exc:  # keep the fake server alive; tests see the stuck phase
                print(f"fake velero: {exc!r}")

    def _reconcile(self) -> None:
        self.store.finalize_namespaces()
        for backup in self.store.list(BACKUPS, self.namespace):
            phase = (backup.get("status") or {}).get("phase", "")
            if phase in ("", "New"):
                self._set_status(BACKUPS, backup, phase="InProgress", startTimestamp=now_iso())
            elif phase == "InProgress" and self.backup_outcome != "stuck":
                self._finish_backup(backup)
        for restore in self.store.list(RESTORES, self.namespace):
            phase = (restore.get("status") or {}).get("phase", "")
            if phase in ("", "New"):
                self._start_restore(restore)
            elif phase == "InProgress" and self.restore_outcome != "stuck":
                self._finish_restore(restore)
        for dbr in self.store.list(DBRS, self.namespace):
            if not (dbr.get("status") or {}).get("phase"):
                self._delete_backup(dbr)

    def _set_status(self, res: Resource, obj: dict[str, Any], **status: Any) -> None:
        name = obj["metadata"]["name"]
        with contextlib.suppress(ApiError):  # deleted meanwhile
            self.store.patch(res, self.namespace, name, {"status": status}, status=True)

    def _finish_backup(self, backup: dict[str, Any]) -> None:
        spec = backup.get("spec") or {}
        if self.backup_outcome == "Failed":
            self._set_status(
                BACKUPS,
                backup,
                phase="Failed",
                completionTimestamp=now_iso(),
                failureReason="error getting backup storage location: emulated failure",
            )
            return
        snap = Snapshot()
        namespaces = [
            ns
            for ns in self.store.list(NAMESPACES)
            if _ns_wanted(
                ns["metadata"]["name"], spec.get("includedNamespaces"), spec.get("excludedNamespaces")
            )
        ]
        selector = spec.get("labelSelector")
        for ns_obj in namespaces:
            ns = ns_obj["metadata"]["name"]
            if _wanted(NAMESPACES, spec.get("includedResources"), spec.get("excludedResources")):
                snap.items.append((NAMESPACES, ns_obj))
            for res in WORKLOAD:
                if not _wanted(res, spec.get("includedResources"), spec.get("excludedResources")):
                    continue
                for obj in self.store.list(res, ns, selector):
                    snap.items.append((res, obj))
        pvcs = [obj for res, obj in snap.items if res is PVCS]
        snapshot_volumes = spec.get("snapshotVolumes") is not False
        fs_backup = bool(spec.get("defaultVolumesToFsBackup"))
        for pvc in pvcs:
            key = (pvc["metadata"]["namespace"], pvc["metadata"]["name"])
            if (fs_backup or snapshot_volumes) and key in self.volumes:
                snap.volumes[key] = self.volumes[key]
            if fs_backup:
                self.store.create(
                    PVBS,
                    self.namespace,
                    {
                        "metadata": {
                            "generateName": backup["metadata"]["name"] + "-",
                            "labels": {"velero.io/backup-name": backup["metadata"]["name"]},
                        },
                        "spec": {"volume": key[1], "pod": {"namespace": key[0]}},
                        "status": {"phase": "Completed"},
                    },
                )
        self.snapshots[backup["metadata"]["name"]] = snap
        n = len(snap.items)
        status: dict[str, Any] = {
            "phase": self.backup_outcome or "Completed",
            "completionTimestamp": now_iso(),
            "progress": {"totalItems": n, "itemsBackedUp": n},
            "version": 1,
            "formatVersion": "1.1.0",
        }
        ttl = spec.get("ttl")
        if ttl:
            status["expiration"] = (datetime.now(UTC) + _duration(ttl)).strftime("%Y-%m-%dT%H:%M:%SZ")
        if snapshot_volumes and not fs_backup and pvcs:
            status["volumeSnapshotsAttempted"] = status["volumeSnapshotsCompleted"] = len(pvcs)
        if self.backup_outcome == "PartiallyFailed":
            status.update(errors=2, warnings=1, failureReason="")
        self._set_status(BACKUPS, backup, **status)

    def _start_restore(self, restore: dict[str, Any]) -> None:
        name = (restore.get("spec") or {}).get("backupName", "")
        backup = self.store.find(BACKUPS, self.namespace, name)
        if backup is None or name not in self.snapshots:
            self._set_status(
                RESTORES,
                restore,
                phase="FailedValidation",
                validationErrors=[f'Error retrieving backup: backups.velero.io "{name}" not found'],
            )
            return
        self._set_status(RESTORES, restore, phase="InProgress", startTimestamp=now_iso())

    def _finish_restore(self, restore: dict[str, Any]) -> None:
        spec = restore.get("spec") or {}
        if self.restore_outcome == "Failed":
            self._set_status(
                RESTORES,
                restore,
                phase="Failed",
                completionTimestamp=now_iso(),
                failureReason="error downloading backup: emulated failure",
            )
            return
        snap = self.snapshots.get(spec.get("backupName", ""), Snapshot())
        mapping = spec.get("namespaceMapping") or {}
        policy = spec.get("existingResourcePolicy") or "none"
        modifiers = self._modifiers(spec.get("resourceModifier"))
        restored = warnings = 0
        candidates = [
            (res, obj)
            for res, obj in snap.items
            if _ns_wanted(
                obj["metadata"]["name"] if res is NAMESPACES else obj["metadata"]["namespace"],
                spec.get("includedNamespaces"),
                spec.get("excludedNamespaces"),
            )
            and _wanted(res, spec.get("includedResources"), spec.get("excludedResources"))
            and match_labels(obj["metadata"].get("labels") or {}, spec.get("labelSelector"))
        ]
        for res, obj in candidates:
            src_ns = obj["metadata"]["name"] if res is NAMESPACES else obj["metadata"]["namespace"]
            ns = mapping.get(src_ns, src_ns)
            if self.store.find(NAMESPACES, "", ns) is None:
                labels = {}
                for r, o in snap.items:
                    if r is NAMESPACES and o["metadata"]["name"] == src_ns:
                        labels = o["metadata"].get("labels") or {}
                self.store.create(NAMESPACES, "", {"metadata": {"name": ns, "labels": labels}})
                restored += 1
            if res is NAMESPACES:
                continue
            new = _clean(obj, restore, spec.get("backupName", ""))
            for rule in modifiers:
                new = rule(res, ns, new)
            existing = self.store.find(res, ns, new["metadata"]["name"])
            if existing is None:
                self.store.create(res, ns, new)
                restored += 1
                if res is PVCS and spec.get("restorePVs") is not False:
                    key = (src_ns, new["metadata"]["name"])
                    if key in snap.volumes:
                        self.volumes[(ns, key[1])] = snap.volumes[key]
            elif policy == "update":
                new["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                self.store.replace(res, ns, new["metadata"]["name"], new)
                restored += 1
            else:
                warnings += 1  # Velero: "could not restore, X already exists"
        status: dict[str, Any] = {
            "phase": self.restore_outcome or "Completed",
            "completionTimestamp": now_iso(),
            "progress": {"totalItems": len(candidates), "itemsRestored": restored},
            "warnings": warnings,
        }
        if self.restore_outcome == "PartiallyFailed":
            status["errors"] = 1
        if self.restore_errors:  # Velero counts item errors; the phase says PartiallyFailed or not
            status["errors"] = self.restore_errors
        self._set_status(RESTORES, restore, **status)

    def _modifiers(self, ref: dict[str, Any] | None) -> list:
        if not ref:
            return []
        cm = self.store.get(CONFIGMAPS, self.namespace, ref["name"])
        doc = yaml.safe_load(next(iter(cm["data"].values())))
        rules = []
        for rule in doc.get("resourceModifierRules") or []:
            cond = rule.get("conditions") or {}
            ops = [
                {"op": p["operation"], "path": p["path"], "value": _velero_value(p.get("value", ""))}
                for p in rule.get("patches") or []
            ]

            def apply(res, ns, obj, cond=cond, ops=ops):
                from sandbox.k8s_emulator.store import json_patch

                if cond.get("groupResource") not in _resource_names(res):
                    return obj
                if cond.get("namespaces") and ns not in cond["namespaces"]:
                    return obj
                if not re.search(cond.get("resourceNameRegex", ".*"), obj["metadata"]["name"]):
                    return obj
                return json_patch(obj, ops)

            rules.append(apply)
        return rules

    def _delete_backup(self, dbr: dict[str, Any]) -> None:
        name = (dbr.get("spec") or {}).get("backupName", "")
        backup = self.store.find(BACKUPS, self.namespace, name)
        errors: list[str] = []
        if backup is None:
            errors.append(f'backups.velero.io "{name}" not found')
        elif (backup.get("status") or {}).get("phase") == "InProgress":
            errors.append("backup is still in progress")  # what Velero answers, verbatim
        else:
            self.store.delete(BACKUPS, self.namespace, name)
            self.snapshots.pop(name, None)
        self._set_status(DBRS, dbr, phase="Processed", errors=errors)


def _clean(obj: dict[str, Any], restore: dict[str, Any], backup_name: str) -> dict[str, Any]:
    new = copy.deepcopy(obj)
    new.pop("status", None)
    meta = new["metadata"]
    for key in ("uid", "resourceVersion", "creationTimestamp", "generation", "namespace"):
        meta.pop(key, None)
    meta.setdefault("labels", {}).update(
        {"velero.io/backup-name": backup_name, "velero.io/restore-name": restore["metadata"]["name"]}
    )
    return new


def _velero_value(value: str) -> Any:
    """Velero's JSONPatch.ToString: numbers, booleans, null, objects and arrays go in unquoted."""
    import json

    if value in ("null", "true", "false") or value[:1] in ("{", "["):
        return json.loads(value)
    try:
        return json.loads(value) if value and float(value) is not None else value
    except ValueError:
        return value


def _duration(text: str) -> timedelta:
    total = 0.0
    for amount, unit in re.findall(r"([\d.]+)([hms])", text):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1}[unit]
    return timedelta(seconds=total)


def backup_done(phase: str | None) -> bool:
    return phase in TERMINAL


def wait_phase(store: ObjectStore, res: Resource, ns: str, name: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = store.find(res, ns, name)
        phase = ((obj or {}).get("status") or {}).get("phase")
        if phase in TERMINAL:
            return phase
        time.sleep(0.01)
    raise TimeoutError(f"{res.plural}/{name} not terminal")
