"""A fake Velero server: a thread that drives Backup, Restore and DeleteBackupRequest objects
the way Velero's controllers do (github.com/vmware-tanzu/velero, pkg/controller/,
pkg/apis/velero/v1/*_types.go), and runs the cluster's own controllers (controllers.py).

Backups (pkg/backup/backup.go, pkg/podvolume/backupper.go): New -> InProgress ->
[WaitingForPluginOperations when the data mover runs] -> Finalizing -> Completed. Objects of the
included namespaces/resources (label selectors honoured), the PVs bound to included PVCs; volume
data by file-system backup (one PodVolumeBackup per volume of a *running* pod in the backup,
`kube.IsPodRunning` in backupper.go) or by snapshot (native, CSI, or CSI + data mover, counted in
backupItemOperations*). Restores are in velero_restore.py. Deletion
(pkg/controller/backup_deletion_controller.go): the DeleteBackupRequest goes InProgress, the
backup Deleting, then both are deleted; on an error it stays Processed with `errors`. Expiry
(pkg/controller/gc_controller.go): a finished backup past its status.expiration is deleted so.
Failure modes are injectable per test.
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox.k8s_emulator import crds, velero_crds, velero_restore
from sandbox.k8s_emulator.controllers import ClusterControllers, claims_of
from sandbox.k8s_emulator.seeding import Seeding
from sandbox.k8s_emulator.snapshot import (
    BACKUPS,
    DBRS,
    NAMESPACES,
    PODS,
    PVBS,
    PVCS,
    PVS,
    RESTORES,
    TERMINAL,
    WORKLOAD,
    Snapshot,
    cluster_scoped_wanted,
    duration,
    ns_wanted,
    wanted,
)
from sandbox.k8s_emulator.store import BY_PATH, RESOURCES, ApiError, ObjectStore, Resource, now_iso

IDLE_PASS_SECONDS = 0.1  # the controller loop's pass when nothing in the store changed
GC_PHASES = ("Completed", "PartiallyFailed", "Failed", "FailedValidation")
BSLS = BY_PATH[("velero.io/v1", "backupstoragelocations")]
DEFAULT_TTL = timedelta(hours=720)
EXCLUDE_LABEL = "velero.io/exclude-from-backup"
# what a backup of the whole cluster holds besides namespaces (item_collector.go lists every
# cluster-scoped resource; Velero's own are not backed up)
CLUSTER_SCOPED = [r for r in RESOURCES if not r.namespaced and r.plural != "namespaces"]
CLASSES = BY_PATH[("storage.k8s.io/v1", "storageclasses")]


class VeleroController(Seeding):
    """Failure switches: `backup_outcome` / `restore_outcome` = None (succeed), 'PartiallyFailed',
    'Failed' or 'stuck' (stays InProgress); `restore_errors` = N item errors on a restore (phase
    Completed unless restore_outcome says otherwise). `installed=False` makes velero.io paths 404."""

    def __init__(self, store: ObjectStore, namespace: str = "velero", tick: float = 0.01):
        self.store = store
        self.namespace = namespace
        self.tick = tick
        self.snapshots: dict[str, Snapshot] = {}
        self.volumes: dict[tuple[str, str], str] = {}  # (namespace, pvc) -> the volume's "content"
        self.cluster = ClusterControllers(store, self.volumes)
        self.pod_volume_data: dict[str, tuple[str, str, str, str]] = {}  # PodVolumeRestore -> data
        self.backup_outcome: str | None = None
        self.restore_outcome: str | None = None
        self.restore_errors = 0  # > 0: restores report that many item errors (with restore_outcome's phase)
        self.installed = True
        # a restored custom resource whose CRD is missing: velero_crds.SKIP or ERROR; restore logs
        self.unresolved_mode, self.restore_logs = velero_crds.SKIP, {}
        # restores wait this long for a target namespace being deleted (Velero's
        # --resource-terminating-timeout, 10 min); restore name -> when its wait began
        self.resource_terminating_timeout = 600.0
        self.terminating_waits: dict[str, float] = {}
        self.denied: set[tuple[str, str]] = set()  # (verb, resource[/subresource])
        self.writes: list[tuple[str, str]] = []  # (method, path) of every mutating request
        self.secret_reads: list[str] = []  # Secret lists that returned data (not metadata only)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-velero", daemon=True)

    # -- test controls -----------------------------------------------------------------------
    def reset(self) -> None:
        self.backup_outcome = self.restore_outcome = None
        self.restore_errors = 0
        self.unresolved_mode, self.restore_logs = velero_crds.SKIP, {}
        self.resource_terminating_timeout = 600.0
        self.terminating_waits.clear()
        self.installed = True
        self.cluster.hold_termination = False
        self.denied.clear()
        self.writes.clear()
        self.secret_reads.clear()

    def wipe(self) -> None:
        """Back to a freshly installed cluster: no objects, no volume data, no Velero backups."""
        with self.store.lock:
            self.reset()
            self.store.clear()
            self.snapshots.clear()
            self.volumes.clear()
            self.pod_volume_data.clear()
            self.install()

    def deny(self, verb: str, resource: str) -> None:
        """Answer 403 to `verb` ('get', 'list', 'create', 'update', 'patch', 'delete') on `resource`
        ('deployments/scale', 'backups', ...), as RBAC would."""
        self.denied.add((verb, resource))

    def older_crds(self, plural: str, *spec_fields: str) -> None:
        """Velero's CRDs as an older release installed them, without these fields of `plural`'s
        spec (e.g. restores' resourceModifier, before Velero 1.12): the server prunes them, or
        refuses them under fieldValidation=Strict. `wipe` reinstalls the current ones."""
        with self.store.lock:
            self.store.crd_fields[plural]["spec"] -= set(spec_fields)

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

    # -- the controller loop -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # A pass over a seeded cluster holds the GIL ~2.5 ms (deep copies); one per tick took a
        # quarter of a core from the test beside it. A pass runs when the store changed (its own
        # writes too), else every IDLE_PASS_SECONDS: failure switches, volume data, expiries.
        seen, last = None, 0.0
        while not self._stop.wait(self.tick):
            now, activity = time.monotonic(), self.store.activity()
            if activity == seen and not activity[2] and now - last < IDLE_PASS_SECONDS:
                continue
            seen, last = activity, now
            try:
                self.cluster.reconcile()
                self._reconcile()
            except Exception as exc:  # keep the fake server alive; tests see the stuck phase
                print(f"fake velero: {exc!r}")

    def _reconcile(self) -> None:
        for backup in self.store.list(BACKUPS, self.namespace):
            phase = (backup.get("status") or {}).get("phase", "")
            if phase in ("", "New"):
                self._start_backup(backup)
            elif phase == "InProgress" and self.backup_outcome != "stuck":
                self._finish_backup(backup)
            elif phase in ("WaitingForPluginOperations", "Finalizing"):
                ops = (backup.get("status") or {}).get("backupItemOperationsAttempted", 0)
                if phase == "Finalizing":
                    self._set_status(
                        BACKUPS,
                        backup,
                        phase=self.backup_outcome or "Completed",
                        completionTimestamp=now_iso(),
                    )
                else:
                    self._set_status(BACKUPS, backup, phase="Finalizing", backupItemOperationsCompleted=ops)
        for restore in self.store.list(RESTORES, self.namespace):
            velero_restore.step(self, restore)
        self._collect_expired()
        for dbr in self.store.list(DBRS, self.namespace):
            if not (dbr.get("status") or {}).get("phase"):
                self._delete_backup(dbr)

    def _collect_expired(self) -> None:
        """Velero's GC controller (pkg/controller/gc_controller.go): a finished backup whose
        status.expiration has passed gets a DeleteBackupRequest, whatever anyone else keeps.
        The expiration is read from the Backup object each time, so extending it keeps it."""
        now = datetime.now(UTC)
        asked = {(d.get("spec") or {}).get("backupName") for d in self.store.list(DBRS, self.namespace)}
        for backup in self.store.list(BACKUPS, self.namespace):
            st = backup.get("status") or {}
            name = backup["metadata"]["name"]
            if st.get("phase") not in GC_PHASES or not st.get("expiration") or name in asked:
                continue
            if datetime.fromisoformat(st["expiration"].replace("Z", "+00:00")) > now:
                continue
            with contextlib.suppress(ApiError):
                self.store.create(
                    DBRS,
                    self.namespace,
                    {
                        "metadata": {
                            "name": f"{name[:50]}-gc{int(time.time() * 1000) % 100000}",
                            "labels": {"velero.io/backup-name": name},
                        },
                        "spec": {"backupName": name},
                    },
                )

    def _set_status(self, res: Resource, obj: dict[str, Any], **status: Any) -> None:
        name = obj["metadata"]["name"]
        with contextlib.suppress(ApiError):  # deleted meanwhile
            self.store.patch(res, self.namespace, name, {"status": status}, status=True)

    def _start_backup(self, backup: dict[str, Any]) -> None:
        """pkg/controller/backup_controller.go prepareBackupRequest: validation first."""
        location = (backup.get("spec") or {}).get("storageLocation") or "default"
        if self.store.find(BSLS, self.namespace, location) is None:
            self._set_status(
                BACKUPS,
                backup,
                phase="FailedValidation",
                validationErrors=[
                    f"an existing backup storage location wasn't specified at backup creation time and the "
                    f'default "{location}" wasn\'t found. Please address this issue (see `velero '
                    "backup-location -h` for options) and create a new backup. Error: "
                    f'backupstoragelocations.velero.io "{location}" not found'
                ],
            )
            return
        self._set_status(
            BACKUPS, backup, phase="InProgress", startTimestamp=now_iso(), version=1, formatVersion="1.1.0"
        )

    def _finish_backup(self, backup: dict[str, Any]) -> None:
        spec = backup.get("spec") or {}
        bname = backup["metadata"]["name"]
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
        inc, exc = spec.get("includedResources"), spec.get("excludedResources")
        selector = spec.get("labelSelector")
        served = crds.served(self.store)
        for ns_obj in self.store.list(NAMESPACES):
            ns = ns_obj["metadata"]["name"]
            if not ns_wanted(ns, spec.get("includedNamespaces"), spec.get("excludedNamespaces")):
                continue
            if wanted(NAMESPACES, inc, exc):
                snap.items.append((NAMESPACES, ns_obj))
            for res in [*WORKLOAD, *velero_crds.namespaced_custom(self.store)]:
                if wanted(res, inc, exc, served):  # a CRD's short name ('ksvc') resolves too
                    snap.items += [(res, obj) for obj in self.store.list(res, ns, selector)]
        pvcs = [obj for res, obj in snap.items if res is PVCS and backed_up(obj)]
        if wanted(PVS, inc, exc):  # the PVC backup item action adds its PV
            for pvc in pvcs:
                pv = self.store.find(PVS, "", (pvc.get("spec") or {}).get("volumeName") or "")
                if pv:
                    snap.items.append((PVS, pv))
        if cluster_scoped_wanted(spec):
            taken = {obj["metadata"]["name"] for res, obj in snap.items if res is PVS}
            for res in CLUSTER_SCOPED:
                if wanted(res, inc, exc):
                    snap.items += [
                        (res, obj)
                        for obj in self.store.list(res, None, selector)
                        if not (res is PVS and obj["metadata"]["name"] in taken)
                    ]
        snap.items = [(res, obj) for res, obj in snap.items if backed_up(obj)]
        snap.items += velero_crds.crds_of_backed_up(
            self.store, spec, snap.items, lambda r: not wanted(r, None, exc)
        )
        status: dict[str, Any] = {}
        fs_done = self._pod_volume_backups(backup, snap, bool(spec.get("defaultVolumesToFsBackup")))
        if spec.get("snapshotVolumes") is not False:
            self._snapshot_volumes(spec, snap, pvcs, fs_done, status)
        self.snapshots[bname] = snap
        n = len(snap.items)
        status.update(progress={"totalItems": n, "itemsBackedUp": n})
        # backup_controller.go prepareBackupRequest: a zero (or missing) TTL is the server's
        # default, --default-backup-ttl 720h
        ttl = duration(spec.get("ttl") or "") or DEFAULT_TTL
        status["expiration"] = (datetime.now(UTC) + ttl).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.backup_outcome == "PartiallyFailed":
            status.update(errors=2, warnings=1, failureReason="")
        status["phase"] = (
            "WaitingForPluginOperations" if status.get("backupItemOperationsAttempted") else "Finalizing"
        )
        self._set_status(BACKUPS, backup, **status)

    def _pod_volume_backups(self, backup: dict, snap: Snapshot, default_fs: bool) -> set[tuple[str, str]]:
        """One PodVolumeBackup per PVC volume of each running pod in the backup (opt-in by
        annotation, or all with defaultVolumesToFsBackup; opt-out by annotation)."""
        done: set[tuple[str, str]] = set()
        bname, buid = backup["metadata"]["name"], backup["metadata"]["uid"]
        for res, pod in list(snap.items):
            if res is not PODS or (pod.get("status") or {}).get("phase") != "Running":
                continue
            meta = pod["metadata"]
            notes = meta.get("annotations") or {}
            opted_in = set(filter(None, notes.get("backup.velero.io/backup-volumes", "").split(",")))
            opted_out = set(
                filter(None, notes.get("backup.velero.io/backup-volumes-excludes", "").split(","))
            )
            ns = meta["namespace"]
            for volume, claim in claims_of(pod):
                if (ns, claim) in done or volume in opted_out or not (default_fs or volume in opted_in):
                    continue
                done.add((ns, claim))
                snap.pod_volumes[(ns, meta["name"], volume)] = self.volumes.get((ns, claim), "")
                self.store.create(
                    PVBS,
                    self.namespace,
                    {
                        "metadata": {
                            "generateName": f"{bname}-",
                            "labels": {"velero.io/backup-name": bname, "velero.io/backup-uid": buid},
                            # backupper.go newPodVolumeBackup: the claim a pod volume comes from
                            "annotations": {"velero.io/pvc-name": claim},
                        },
                        "spec": {
                            "node": "node-1",
                            "pod": {"kind": "Pod", "namespace": ns, "name": meta["name"], "uid": meta["uid"]},
                            "volume": volume,
                            "backupStorageLocation": "default",
                            "uploaderType": "kopia",
                        },
                    },
                )
        for pvb in self.store.list(PVBS, self.namespace, f"velero.io/backup-name={bname}"):
            self._set_status(PVBS, pvb, phase="Completed", snapshotID=pvb["metadata"]["uid"][:8])
        return done

    def _snapshot_volumes(self, spec: dict, snap: Snapshot, pvcs: list, fs_done: set, status: dict) -> None:
        """Bound PVCs not backed up by file system: native snapshots of in-tree PVs, CSI
        snapshots of CSI PVs; with snapshotMoveData a DataUpload per CSI snapshot."""
        for pvc in pvcs:
            key = (pvc["metadata"]["namespace"], pvc["metadata"]["name"])
            if key in fs_done or (pvc.get("status") or {}).get("phase") != "Bound":
                continue
            pv = self.store.find(PVS, "", pvc["spec"].get("volumeName") or "") or {}
            snap.volumes[key] = self.volumes.get(key, "")
            if "csi" in (pv.get("spec") or {}):
                if spec.get("snapshotMoveData"):
                    status["backupItemOperationsAttempted"] = (
                        status.get("backupItemOperationsAttempted", 0) + 1
                    )
                else:
                    for field in ("csiVolumeSnapshotsAttempted", "csiVolumeSnapshotsCompleted"):
                        status[field] = status.get(field, 0) + 1
            else:
                for field in ("volumeSnapshotsAttempted", "volumeSnapshotsCompleted"):
                    status[field] = status.get(field, 0) + 1

    def _delete_backup(self, dbr: dict[str, Any]) -> None:
        name = (dbr.get("spec") or {}).get("backupName", "")
        backup = self.store.find(BACKUPS, self.namespace, name)
        phase = ((backup or {}).get("status") or {}).get("phase")
        if backup is None:
            self._set_status(DBRS, dbr, phase="Processed", errors=["backup not found"])
            return
        if phase in ("New", "InProgress", "WaitingForPluginOperations", "Finalizing"):
            self._set_status(DBRS, dbr, phase="Processed", errors=["backup is still in progress"])
            return
        self._set_status(DBRS, dbr, phase="InProgress")
        self._set_status(BACKUPS, backup, phase="Deleting")
        for kind in (PVBS, RESTORES):
            for obj in self.store.list(kind, self.namespace):
                if obj["metadata"].get("labels", {}).get("velero.io/backup-name") == name or (
                    (obj.get("spec") or {}).get("backupName") == name
                ):
                    with contextlib.suppress(ApiError):
                        self.store.delete(kind, self.namespace, obj["metadata"]["name"])
        self.store.delete(BACKUPS, self.namespace, name)
        self.snapshots.pop(name, None)
        self._set_status(DBRS, dbr, phase="Processed", errors=[])
        # "Everything deleted correctly, so we can delete all DeleteBackupRequests for this backup"
        for other in self.store.list(DBRS, self.namespace, f"velero.io/backup-name={name}"):
            with contextlib.suppress(ApiError):
                self.store.delete(DBRS, self.namespace, other["metadata"]["name"])
        with contextlib.suppress(ApiError):
            self.store.delete(DBRS, self.namespace, dbr["metadata"]["name"])


def backed_up(obj: dict[str, Any]) -> bool:
    """item_backupper.go itemInclusionChecks: an object labelled velero.io/exclude-from-backup=true
    is left out ("Excluding item because it has label"), and so is one being deleted ("Skipping
    item because it's being deleted"); a claim left out brings no PV and no snapshot."""
    meta = obj["metadata"]
    return (meta.get("labels") or {}).get(EXCLUDE_LABEL) != "true" and not meta.get("deletionTimestamp")


def wait_phase(store: ObjectStore, res: Resource, ns: str, name: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = store.find(res, ns, name)
        phase = ((obj or {}).get("status") or {}).get("phase")
        if phase in TERMINAL:
            return phase
        time.sleep(0.01)
    raise TimeoutError(f"{res.plural}/{name} not terminal")
