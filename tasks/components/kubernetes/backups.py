"""One Velero backup, what it holds (the inventory), and our record of it in the store; and the
safety copy a restore takes of what it is about to overwrite (safety_backup)."""

from __future__ import annotations

import json
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from blocks.kubernetes import VeleroTarget
from blocks.store import StoreBlock
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes import custom
from tasks.components.kubernetes.api import KINDS, Kube, canonical_resource, connect, selector_string
from tasks.components.kubernetes.discovery import check_resource_names
from tasks.components.kubernetes.labels import held_labels
from tasks.components.kubernetes.velero import (
    BACKUP_TERMINAL,
    GROUP,
    VERSION,
    _call,
    _status_text,
    _wait,
    cancel_backup,
    get_backup_cr,
    id_metadata,
    object_name,
    pod_volume_backups,
    preflight,
)
from tasks.errors import BadInput, ComponentFailed, IntegrityError, NotFound
from tasks.models import Manifest
from tasks.storage.session import BackupSession, read_object
from tasks.table import policy

log = logging.getLogger(__name__)
OBJECT_NAME = "velero-backup.json"


class BackupSpec(BaseModel):
    """What one Velero backup includes (the block's defaults, or a caller's overrides)."""

    include_namespaces: list[str]
    exclude_namespaces: list[str] = Field(default_factory=list)
    include_resources: list[str] = Field(default_factory=list)
    exclude_resources: list[str] = Field(default_factory=list)
    label_selector: dict[str, str] = Field(default_factory=dict)
    snapshot_volumes: bool | None = None
    default_volumes_to_fs_backup: bool = False
    snapshot_move_data: bool = False  # CSI snapshots moved to the BSL by Velero's data mover
    ttl_hours: float | None = None
    # Velero's includeClusterResources; None: cluster-scoped objects only when every namespace is in
    include_cluster_resources: bool | None = None

    @classmethod
    def of(cls, target: VeleroTarget, **overrides: Any) -> BackupSpec:
        fields = {name: getattr(target, name) for name in cls.model_fields if hasattr(target, name)}
        return cls(**{**fields, **overrides})

    def cr(self, name: str, target: VeleroTarget, ttl: timedelta, metadata: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "includedNamespaces": self.include_namespaces or ["*"],
            "excludedNamespaces": self.exclude_namespaces,
            "storageLocation": target.storage_location,
            "ttl": go_duration(ttl),
            "defaultVolumesToFsBackup": self.default_volumes_to_fs_backup,
        }
        if self.include_resources:
            spec["includedResources"] = self.include_resources
        if self.exclude_resources:
            spec["excludedResources"] = self.exclude_resources
        if self.label_selector:
            spec["labelSelector"] = {"matchLabels": self.label_selector}
        if self.snapshot_volumes is not None:
            spec["snapshotVolumes"] = self.snapshot_volumes
        if self.snapshot_move_data:
            spec["snapshotMoveData"] = True
        if self.include_cluster_resources is not None:
            spec["includeClusterResources"] = self.include_cluster_resources
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Backup",
            "metadata": {"name": name, "namespace": target.namespace, **metadata},
            "spec": spec,
        }


def go_duration(ttl: timedelta) -> str:
    """A metav1.Duration Velero reads with time.ParseDuration, to the second (whole hours cut
    0.5 h to "0h0m0s", which Velero replaces with its 30-day default TTL)."""
    seconds = max(int(ttl.total_seconds()), 1)
    return f"{seconds // 3600}h{seconds % 3600 // 60}m{seconds % 60}s"


def _kinds(include: list[str], exclude: list[str]) -> list[str]:
    inc = {canonical_resource(r) for r in include}
    exc = {canonical_resource(r) for r in exclude}
    return [p for p in KINDS if (not inc or "*" in inc or p in inc) and p not in exc]


def inventory(
    k: Kube, namespaces: list[str], kinds: list[str], label_selector: dict[str, str] | None = None
) -> dict[str, dict[str, list[str]]]:
    """namespace -> kind -> sorted object names, as the API lists them now (names only: no data);
    a namespace that is gone holds nothing. Only what Velero backs up: not the objects labelled
    velero.io/exclude-from-backup=true, nor those being deleted (a restore must not expect them);
    nor those the cluster makes in every namespace (kube.CLUSTER_MANAGED: there before any restore)."""
    selector = selector_string(label_selector)
    served = custom.served_kinds(k) if any(custom.is_custom(p) for p in kinds) else {}

    def names(ns: str, plural: str) -> list[str]:
        if custom.is_custom(plural):  # a custom resource (its CRD gone meanwhile: none)
            return custom.list_names(k, ns, plural, selector, backed_up=True, served=served) or []
        return kube.workload_names(plural, kube.list_names(k, ns, plural, selector, backed_up=True))

    out: dict[str, dict[str, list[str]]] = {}
    for ns in namespaces:
        try:
            out[ns] = {plural: names(ns, plural) for plural in kinds}
        except NotFound:
            out[ns] = dict.fromkeys(kinds, [])
    return out


def claim_volumes(k: Kube, held: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, str]]:
    """namespace -> claim -> the PV it is bound to, for the claims the backup holds: the name
    Velero restores the claim's snapshot under, which a restore must know even once the claim
    is gone (a PV of that name left in the cluster makes Velero wait, then fail the item)."""
    out = {}
    for ns, kinds_ in held.items():
        if names := set(kinds_.get("persistentvolumeclaims", [])):
            bound = kube.list_pvcs(k, ns)
            out[ns] = {p["name"]: p["volume"] for p in bound if p["name"] in names and p["volume"]}
    return out


def settled(
    before: dict[str, dict[str, list[str]]], after: dict[str, dict[str, list[str]]]
) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """What the backup surely holds: the objects there both before the Backup was created and
    after it completed (one deleted or created meanwhile may or may not be in it, so restores and
    drills must not expect it); and those that changed, as ns/kind/name."""
    held = {
        ns: {plural: sorted(set(names) & set(after[ns][plural])) for plural, names in kinds_.items()}
        for ns, kinds_ in before.items()
    }
    changed = sorted(
        f"{ns}/{plural}/{name}"
        for ns, kinds_ in before.items()
        for plural, names in kinds_.items()
        for name in set(names) ^ set(after[ns][plural])
    )
    return held, changed


def run_backup(target: VeleroTarget, session: BackupSession, spec: BackupSpec) -> dict[str, Any]:
    """One Velero backup into `session`: preflight, Backup CR, wait, record. No manifest unless
    Velero says Completed."""
    k = connect(target.kube)
    preflight(k, target)
    # Velero ignores a type it cannot resolve: a misspelt exclusion would back up what it names
    check_resource_names(
        k, include_resources=spec.include_resources, exclude_resources=spec.exclude_resources
    )
    existing = kube.list_namespaces(k)
    if not spec.include_namespaces or "*" in spec.include_namespaces:
        namespaces = [n for n in existing if n not in spec.exclude_namespaces]
    else:
        namespaces = [
            n for n in spec.include_namespaces if n in existing and n not in spec.exclude_namespaces
        ]
    missing = sorted(set(spec.include_namespaces) - set(existing) - {"*"})
    if not namespaces:
        raise BadInput(
            f"none of the namespaces {spec.include_namespaces} exists on the cluster: nothing to back up. "
            "Fix include_namespaces on the Velero target block"
        )
    if missing:
        log.warning("namespaces %s do not exist and are not in backup %s", missing, session.id)
    kinds = _kinds(spec.include_resources, spec.exclude_resources)
    kinds += custom.select(k, spec.include_resources, spec.exclude_resources)  # found by discovery
    source_time = datetime.now(UTC)
    expected = inventory(k, namespaces, kinds, spec.label_selector)
    ttl = timedelta(hours=spec.ttl_hours) if spec.ttl_hours else policy(session.component).retention
    # our ids have upper case (T, Z): the CR gets a lowercase name, the id rides along in metadata
    metadata = id_metadata(session.id, {"klb.io/component": object_name(session.component)})
    name = object_name(session.id)
    _call(
        k,
        f"create Velero backup {name}",
        "create",
        "backups",
        target.namespace,
        spec.cr(name, target, ttl, metadata),
    )
    log.info("created Velero backup %s of %s", name, namespaces)
    cr, done = _wait(k, target, "backups", name, BACKUP_TERMINAL, target.backup_timeout_seconds)
    if not done:
        said = _status_text(cr)
        outcome = "not cancelled (cancel_stuck_backups is off)"
        if target.cancel_stuck_backups:
            try:
                cancel_backup(target, name)
                outcome = "cancelled (DeleteBackupRequest processed)"
            except Exception as exc:  # the timeout is the failure; the cancel outcome is information
                outcome = f"cancel failed: {exc}"
        raise ComponentFailed(
            f"Velero backup {name} did not finish within {target.backup_timeout_seconds:.0f}s ({said}); "
            f"{outcome}. See `velero backup describe {name} --details` and `velero backup logs {name}`"
        )
    phase = cr["status"]["phase"]
    if phase != "Completed":
        raise ComponentFailed(
            f"Velero backup {name} ended {phase} ({_status_text(cr)}): not recorded as a backup. "
            f"Velero keeps it for inspection: `velero backup describe {name} --details`, "
            f"`velero backup logs {name}`"
        )
    described = describe_backup(k, target, cr)
    expected, changed = settled(expected, inventory(k, namespaces, kinds, spec.label_selector))
    if changed:
        log.warning("created or deleted while Velero backed up (not verified on restore): %s", changed)
    doc = {
        "backup": cr,
        "describe": described,
        "inventory": expected,
        "changed_during_backup": changed,
        "missing_namespaces": missing,
        "claim_volumes": claim_volumes(k, expected),
        "labels": held_labels(k, expected),  # what a restore by label_selector must bring back
    }
    session.write(
        OBJECT_NAME, [json.dumps(doc, indent=2, sort_keys=True).encode()], meta={"velero_backup": name}
    )
    session.source_time = source_time
    session.engine.update(
        velero_backup=name,
        phase=phase,
        items_backed_up=described["items_backed_up"],
        total_items=described["total_items"],
        warnings=described["warnings"],
        errors=described["errors"],
        volume_snapshots=described["volume_snapshots"],
        fs_backups=described["fs_backups"],
        storage_location=target.storage_location,
        namespaces=namespaces,
        # the scope it was asked for: 'latest' of a wider scope must not pick it (operations/scope.py)
        scope=spec.model_dump(
            include={
                "include_namespaces",
                "exclude_namespaces",
                "include_resources",
                "exclude_resources",
                "label_selector",
            }
        ),
        expiration=(cr.get("status") or {}).get("expiration"),
    )
    session.fingerprint = {ns: {p: len(v) for p, v in kinds_.items()} for ns, kinds_ in expected.items()}
    return doc


def describe_backup(k: Kube, target: VeleroTarget, cr: dict[str, Any]) -> dict[str, Any]:
    """What `velero backup describe --details` shows that matters for a restore."""
    st = cr.get("status") or {}
    name = cr["metadata"]["name"]
    pvbs = pod_volume_backups(k, target, name)
    return {
        "name": name,
        "phase": st.get("phase"),
        "started": st.get("startTimestamp"),
        "completed": st.get("completionTimestamp"),
        "expiration": st.get("expiration"),
        "total_items": (st.get("progress") or {}).get("totalItems", 0),
        "items_backed_up": (st.get("progress") or {}).get("itemsBackedUp", 0),
        "warnings": st.get("warnings", 0),
        "errors": st.get("errors", 0),
        "volume_snapshots": {
            "attempted": st.get("volumeSnapshotsAttempted", 0),
            "completed": st.get("volumeSnapshotsCompleted", 0),
            "csi_attempted": st.get("csiVolumeSnapshotsAttempted", 0),
            "csi_completed": st.get("csiVolumeSnapshotsCompleted", 0),
            # data-mover uploads are async item operations (backup_types.go)
            "data_mover_attempted": st.get("backupItemOperationsAttempted", 0),
            "data_mover_completed": st.get("backupItemOperationsCompleted", 0),
        },
        "fs_backups": [
            {
                "volume": (p.get("spec") or {}).get("volume"),
                "namespace": ((p.get("spec") or {}).get("pod") or {}).get("namespace"),
                "phase": (p.get("status") or {}).get("phase"),
            }
            for p in pvbs
        ],
    }


def backup(target: VeleroTarget, session: BackupSession) -> None:
    run_backup(target, session, BackupSpec.of(target))


def load_document(store: StoreBlock, manifest: Manifest) -> dict[str, Any]:
    """Our record of the Velero backup (small JSON; sha256-checked by read_object)."""
    try:
        obj = manifest.object(OBJECT_NAME)
    except KeyError:
        raise IntegrityError(f"backup {manifest.id} has no {OBJECT_NAME}: not a Velero backup") from None
    raw = b"".join(read_object(store, obj))
    try:
        doc = json.loads(raw)
        doc["backup"]["metadata"]["name"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{OBJECT_NAME} of backup {manifest.id} is not a Velero backup record") from None
    return doc


def verify(target: VeleroTarget | None, manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
    """Our record is intact, and (given a target) Velero still has the backup, Completed."""
    doc = load_document(store, manifest)
    name = doc["backup"]["metadata"]["name"]
    report: dict[str, Any] = {"velero_backup": name, "inventory_namespaces": sorted(doc["inventory"])}
    if target is not None:
        cr = get_backup_cr(connect(target.kube), target, name)
        phase = (cr.get("status") or {}).get("phase")
        if phase != "Completed":
            raise IntegrityError(
                f"Velero backup {name} is {phase} on the cluster, not Completed: do not restore it"
            )
        report["velero_phase"] = phase
    return report


def safety_backup(
    k: Kube, target: VeleroTarget, namespaces: list[str], backup_id: str = "", cluster: bool = False
) -> str | None:
    """Before a restore overwrites objects (policy update): a Velero backup of what is there now,
    kept 7 days, so the overwrite can be rolled back. `cluster`: the restore overwrites
    cluster-scoped objects too, so they are in the copy. None if there is nothing to copy."""
    present = [ns for ns in namespaces if kube.namespace_exists(k, ns)]
    if not present and not cluster:
        return None
    name = f"klb-pre-restore-{datetime.now(UTC):%Y%m%dt%H%M%S}-{secrets.token_hex(3)}"
    metadata = id_metadata(backup_id, {"klb.io/purpose": "pre-restore"})
    # no namespace present: Velero reads an empty includedNamespaces as all of them, so one that
    # cannot exist keeps the copy to the cluster-scoped objects
    spec = BackupSpec(include_namespaces=present or ["klb-none"], include_cluster_resources=cluster or None)
    body = spec.cr(name, target, timedelta(days=7), metadata)
    _call(k, f"create Velero backup {name}", "create", "backups", target.namespace, body)
    cr, done = _wait(k, target, "backups", name, BACKUP_TERMINAL, target.backup_timeout_seconds)
    if not done or cr["status"]["phase"] != "Completed":
        raise ComponentFailed(
            f"the safety backup {name} of {present}{' and the cluster-scoped objects' if cluster else ''} "
            "before overwriting them did not complete "
            f"({_status_text(cr)}): nothing was restored"
        )
    log.info("safety backup %s of %s (cluster-scoped: %s) taken before overwriting", name, present, cluster)
    return name
