"""Component "kubernetes": Kubernetes resources through Velero's custom resources.

Velero is the engine. We drive it as the `velero` CLI does, with Backup, Restore and
DeleteBackupRequest objects, wait for a terminal phase, and keep in our store what proves the
backup: the Backup CR as Velero left it, a describe-like summary, and an inventory of the
objects it should hold. That inventory is what restores and drills verify against.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import yaml
from pydantic import BaseModel, Field, field_validator

from blocks.kubernetes import VeleroTarget
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes.api import KINDS, Kube, canonical_resource, connect, selector_string
from tasks.errors import BadInput, ComponentFailed, ConfigurationError, IntegrityError, NotFound
from tasks.models import Manifest
from tasks.storage.session import BackupSession, read_object
from tasks.table import policy

log = logging.getLogger(__name__)
Target = VeleroTarget
GROUP, VERSION = "velero.io", "v1"
OBJECT_NAME = "velero-backup.json"
BACKUP_TERMINAL = {"Completed", "PartiallyFailed", "Failed", "FailedValidation", "Deleting"}
RESTORE_TERMINAL = {"Completed", "PartiallyFailed", "Failed", "FailedValidation"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
NOT_INSTALLED = (
    "Velero is not installed on this cluster (no velero.io/v1 API): install Velero "
    "(`velero install ...`, or its Helm chart) and check `kubectl get crd backups.velero.io`"
)


def default_target() -> VeleroTarget:
    ref = os.environ.get("KLB_VELERO_TARGET")
    if ref:
        return VeleroTarget.load(ref)
    raise ConfigurationError(
        "no Velero target: create a 'klb-velero-target' block and pass its name, or set KLB_VELERO_TARGET"
    )


# -- talking to Velero --------------------------------------------------------------------------------
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
    """Poll until a terminal phase; -> (object, finished)."""
    deadline = time.monotonic() + timeout
    while True:
        obj = _call(k, f"read Velero {plural} {name}", "get", plural, target.namespace, name)
        phase = (obj.get("status") or {}).get("phase")
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


# -- backup ---------------------------------------------------------------------------------------------
class BackupSpec(BaseModel):
    """What one Velero backup includes (the block's defaults, or a caller's overrides)."""

    include_namespaces: list[str]
    exclude_namespaces: list[str] = Field(default_factory=list)
    include_resources: list[str] = Field(default_factory=list)
    exclude_resources: list[str] = Field(default_factory=list)
    label_selector: dict[str, str] = Field(default_factory=dict)
    snapshot_volumes: bool | None = None
    default_volumes_to_fs_backup: bool = False
    ttl_hours: float | None = None

    @classmethod
    def of(cls, target: VeleroTarget, **overrides: Any) -> BackupSpec:
        fields = {name: getattr(target, name) for name in cls.model_fields}
        return cls(**{**fields, **overrides})

    def cr(self, name: str, target: VeleroTarget, ttl: timedelta, labels: dict[str, str]) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "includedNamespaces": self.include_namespaces or ["*"],
            "excludedNamespaces": self.exclude_namespaces,
            "storageLocation": target.storage_location,
            "ttl": f"{int(ttl.total_seconds() // 3600)}h0m0s",
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
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Backup",
            "metadata": {"name": name, "namespace": target.namespace, "labels": labels},
            "spec": spec,
        }


def _kinds(include: list[str], exclude: list[str]) -> list[str]:
    inc = {canonical_resource(r) for r in include}
    exc = {canonical_resource(r) for r in exclude}
    return [p for p in KINDS if (not inc or "*" in inc or p in inc) and p not in exc]


def inventory(
    k: Kube, namespaces: list[str], kinds: list[str], label_selector: dict[str, str] | None = None
) -> dict[str, dict[str, list[str]]]:
    """namespace -> kind -> sorted object names, as the API lists them now (names only: no data)."""
    selector = selector_string(label_selector)
    return {ns: {plural: kube.list_names(k, ns, plural, selector) for plural in kinds} for ns in namespaces}


def run_backup(target: VeleroTarget, session: BackupSession, spec: BackupSpec) -> dict[str, Any]:
    """One Velero backup into `session`: preflight, Backup CR, wait, record. No manifest unless
    Velero says Completed."""
    k = connect(target.kube)
    preflight(k, target)
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
    source_time = datetime.now(UTC)
    expected = inventory(k, namespaces, kinds, spec.label_selector)
    ttl = timedelta(hours=spec.ttl_hours) if spec.ttl_hours else policy(session.component).retention
    labels = {"klb.io/backup-id": session.id, "klb.io/component": session.component}
    name = session.id
    _call(
        k,
        f"create Velero backup {name}",
        "create",
        "backups",
        target.namespace,
        spec.cr(name, target, ttl, labels),
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
    doc = {"backup": cr, "describe": described, "inventory": expected, "missing_namespaces": missing}
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
        expiration=(cr.get("status") or {}).get("expiration"),
    )
    session.fingerprint = {ns: {p: len(v) for p, v in kinds_.items()} for ns, kinds_ in expected.items()}
    return doc


def describe_backup(k: Kube, target: VeleroTarget, cr: dict[str, Any]) -> dict[str, Any]:
    """What `velero backup describe --details` shows that matters for a restore."""
    st = cr.get("status") or {}
    name = cr["metadata"]["name"]
    pvbs = _call(
        k,
        f"list PodVolumeBackups of {name}",
        "list",
        "podvolumebackups",
        target.namespace,
        label_selector=f"velero.io/backup-name={name}",
    )["items"]
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


# -- verify -------------------------------------------------------------------------------------------
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


# -- restore ------------------------------------------------------------------------------------------
class ExistingResourcePolicy(StrEnum):
    """Velero's existingResourcePolicy: 'none' skips objects that already exist (and reports
    them), 'update' overwrites them."""

    none = "none"
    update = "update"


class RestoreOptions(StrictOptions):
    namespaces: list[str] | None = Field(
        default=None, description="source namespaces (default: all in the backup)"
    )
    exclude_namespaces: list[str] = Field(default_factory=list)
    resources: list[str] | None = Field(default=None, description="e.g. ['configmaps', 'secrets']")
    exclude_resources: list[str] = Field(default_factory=list)
    names: list[str] | None = Field(
        default=None, description="only these object names (restored aside, then copied in)"
    )
    namespace_mapping: dict[str, str] = Field(default_factory=dict, description="source -> target namespace")
    existing_resource_policy: ExistingResourcePolicy = ExistingResourcePolicy.none
    restore_pvs: bool | None = Field(default=None, description="restore volume data (Velero restorePVs)")
    label_selector: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(default=None, gt=0, description="default: the target's")

    @field_validator("namespace_mapping")
    @classmethod
    def _dns(cls, mapping: dict[str, str]) -> dict[str, str]:
        bad = [n for n in mapping.values() if not DNS_LABEL.fullmatch(n) or len(n) > 63]
        if bad:
            raise ValueError(f"target namespaces {bad} are not valid names (lower-case DNS labels, <= 63)")
        return mapping


def restore(
    target: VeleroTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    return restore_document(target, load_document(store, manifest), options, manifest.id)


def _plan(doc: dict[str, Any], options: RestoreOptions) -> tuple[list[str], list[str]]:
    """-> (source namespaces, kinds we can verify); BadInput on what the backup does not hold."""
    in_backup = sorted(doc["inventory"])
    wanted = options.namespaces or in_backup
    unknown = sorted(set(wanted) - set(in_backup))
    if unknown:
        raise BadInput(
            f"namespaces {unknown} are not in Velero backup {doc['backup']['metadata']['name']}: "
            f"it holds {in_backup}"
        )
    wanted = [n for n in wanted if n not in options.exclude_namespaces]
    if not wanted:  # Velero reads an empty includedNamespaces as "all of them"
        raise BadInput("the exclusions leave no namespace to restore")
    unknown = sorted(set(options.namespace_mapping) - set(wanted))
    if unknown:
        raise BadInput(f"namespace_mapping names {unknown}, which this restore does not include")
    kinds = _kinds(options.resources or [], options.exclude_resources)
    return wanted, kinds


def _expected(doc: dict[str, Any], namespaces: list[str], kinds: list[str], names: list[str] | None) -> dict:
    """(target namespace unmapped) -> kind -> names the backup holds and the restore asks for."""
    out: dict[str, dict[str, list[str]]] = {}
    for ns in namespaces:
        for plural in kinds:
            held = doc["inventory"].get(ns, {}).get(plural, [])
            picked = [n for n in held if names is None or n in names]
            if picked:
                out.setdefault(ns, {})[plural] = picked
    return out


def _present(k: Kube, ns: str, plural: str) -> set[str]:
    if not kube.namespace_exists(k, ns):
        return set()
    return set(kube.list_names(k, ns, plural))


def restore_document(
    target: VeleroTarget, doc: dict[str, Any], options: RestoreOptions, backup_id: str = ""
) -> dict[str, Any]:
    """Restore from our record of a Velero backup; verify the objects are where expected."""
    k = connect(target.kube)
    preflight(k, target)
    name = doc["backup"]["metadata"]["name"]
    get_backup_cr(k, target, name)  # unknown/expired backup: a clear error before anything is created
    namespaces, kinds = _plan(doc, options)
    if options.names:
        return _restore_named(k, target, doc, options, namespaces, kinds, backup_id)
    if options.label_selector:
        log.info("label selector %s: objects without those labels are not verified", options.label_selector)
    expected = _expected(doc, namespaces, kinds, None) if not options.label_selector else {}
    mapping = options.namespace_mapping
    before = {
        (ns, plural): _present(k, mapping.get(ns, ns), plural)
        for ns, kinds_ in expected.items()
        for plural in kinds_
    }
    spec: dict[str, Any] = {
        "backupName": name,
        "includedNamespaces": namespaces,
        "excludedNamespaces": options.exclude_namespaces,
        "namespaceMapping": mapping,
        "existingResourcePolicy": options.existing_resource_policy.value,
    }
    if options.resources:
        spec["includedResources"] = options.resources
    if options.exclude_resources:
        spec["excludedResources"] = options.exclude_resources
    if options.restore_pvs is not None:
        spec["restorePVs"] = options.restore_pvs
    if options.label_selector:
        spec["labelSelector"] = {"matchLabels": options.label_selector}
    rollback = None
    if options.existing_resource_policy is ExistingResourcePolicy.update:
        rollback = safety_backup(k, target, [mapping.get(ns, ns) for ns in namespaces], backup_id)
    cr = run_restore(k, target, name, spec, options.timeout_seconds, backup_id)
    missing = {
        f"{mapping.get(ns, ns)}/{plural}/{obj}"
        for ns, kinds_ in expected.items()
        for plural, objs in kinds_.items()
        for obj in sorted(set(objs) - _present(k, mapping.get(ns, ns), plural))
    }
    if missing:
        raise IntegrityError(
            f"Velero restore {cr['metadata']['name']} Completed but these objects are missing: "
            f"{sorted(missing)[:20]}: see `velero restore describe {cr['metadata']['name']} --details`"
        )
    skipped = sorted(
        f"{mapping.get(ns, ns)}/{plural}/{obj}"
        for (ns, plural), objs in before.items()
        for obj in objs
        if obj in expected[ns][plural]
    )
    st = cr.get("status") or {}
    report = {
        "velero_backup": name,
        "velero_restore": cr["metadata"]["name"],
        "phase": st.get("phase"),
        "items_restored": (st.get("progress") or {}).get("itemsRestored"),
        "warnings": st.get("warnings", 0),
        "namespaces": {ns: mapping.get(ns, ns) for ns in namespaces},
        "verified_objects": sum(len(v) for kinds_ in expected.values() for v in kinds_.values()),
        "existing_resource_policy": options.existing_resource_policy.value,
        "already_existed": skipped,
    }
    if rollback:
        report["rollback_velero_backup"] = rollback
    if skipped and options.existing_resource_policy is ExistingResourcePolicy.none:
        report["note"] = (
            f"{len(skipped)} objects already existed and were left as they are (existing_resource_policy="
            "none): delete them first, or restore with existing_resource_policy=update"
        )
        log.warning(report["note"])
    return report


def safety_backup(k: Kube, target: VeleroTarget, namespaces: list[str], backup_id: str = "") -> str | None:
    """Before a restore overwrites objects (policy update): a Velero backup of what is there now,
    kept 7 days, so the overwrite can be rolled back. None if none of the namespaces exists."""
    present = [ns for ns in namespaces if kube.namespace_exists(k, ns)]
    if not present:
        return None
    name = f"klb-pre-restore-{datetime.now(UTC):%Y%m%dt%H%M%S}-{secrets.token_hex(3)}"
    labels = {"klb.io/purpose": "pre-restore", **({"klb.io/backup-id": backup_id[:63]} if backup_id else {})}
    body = BackupSpec(include_namespaces=present).cr(name, target, timedelta(days=7), labels)
    _call(k, f"create Velero backup {name}", "create", "backups", target.namespace, body)
    cr, done = _wait(k, target, "backups", name, BACKUP_TERMINAL, target.backup_timeout_seconds)
    if not done or cr["status"]["phase"] != "Completed":
        raise ComponentFailed(
            f"the safety backup {name} of {present} before overwriting them did not complete "
            f"({_status_text(cr)}): nothing was restored"
        )
    log.info("safety backup %s of %s taken before overwriting", name, present)
    return name


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
    phase, errors = cr["status"]["phase"], cr["status"].get("errors") or 0
    if phase != "Completed" or errors:
        raise ComponentFailed(
            f"Velero restore {name} ended {phase} with {errors} errors ({_status_text(cr)}): the restore "
            f"is incomplete. List them with `velero restore describe {name} --details` and "
            f"`velero restore logs {name}`, fix the cause, then restore again"
        )
    return cr


def _aside_name(prefix: str, token: str, ns: str) -> str:
    name = f"{prefix}-{token}-{ns}"
    return (
        name if len(name) <= 63 else f"{prefix}-{token}-{ns[: 62 - len(prefix) - len(token) - 2]}".rstrip("-")
    )


def _restore_named(
    k: Kube,
    target: VeleroTarget,
    doc: dict[str, Any],
    options: RestoreOptions,
    namespaces: list[str],
    kinds: list[str],
    backup_id: str,
) -> dict[str, Any]:
    """Velero cannot select by name: restore the resource types aside into a scratch namespace,
    check the named objects are there, copy just those into place, and remove the scratch."""
    if (
        "persistentvolumeclaims" in kinds
        and options.resources
        and "persistentvolumeclaims" in {canonical_resource(r) for r in options.resources}
    ):
        raise BadInput(
            "single PVCs cannot be copied between namespaces with their data: use the data_corruption flow"
        )
    kinds = [p for p in kinds if p != "persistentvolumeclaims"]
    expected = _expected(doc, namespaces, kinds, options.names)
    found = {n for kinds_ in expected.values() for objs in kinds_.values() for n in objs}
    absent = sorted(set(options.names or []) - found)
    if absent:
        raise BadInput(f"objects {absent} of types {kinds} are not in the backup's namespaces {namespaces}")
    token = secrets.token_hex(3)
    aside = {ns: _aside_name("klb-aside", token, ns) for ns in expected}
    copied, skipped = [], []
    try:
        spec = {
            "backupName": doc["backup"]["metadata"]["name"],
            "includedNamespaces": list(expected),
            "includedResources": kinds,
            "namespaceMapping": aside,
            "restorePVs": False,
            "existingResourcePolicy": "none",
        }
        cr = run_restore(k, target, spec["backupName"], spec, options.timeout_seconds, backup_id)
        rollback = None
        if options.existing_resource_policy is ExistingResourcePolicy.update:
            dests = [options.namespace_mapping.get(ns, ns) for ns in expected]
            rollback = safety_backup(k, target, dests, backup_id)
        for ns, kinds_ in expected.items():
            dest = options.namespace_mapping.get(ns, ns)
            if not kube.namespace_exists(k, dest):
                kube.create_namespace(k, dest)
            for plural, objs in kinds_.items():
                for obj_name in objs:
                    where = f"{dest}/{plural}/{obj_name}"
                    if _copy(k, plural, aside[ns], dest, obj_name, options.existing_resource_policy):
                        copied.append(where)
                    else:
                        skipped.append(where)
    finally:
        for ns in aside.values():
            try:
                kube.delete_namespace(k, ns, interval=target.poll_interval_seconds)
            except Exception as exc:
                log.error("could not delete scratch namespace %s: %s", ns, exc)
    return {
        "velero_backup": doc["backup"]["metadata"]["name"],
        "velero_restore": cr["metadata"]["name"],
        "phase": "Completed",
        "restored_objects": copied,
        "already_existed": skipped,
        "rollback_velero_backup": rollback,
        "existing_resource_policy": options.existing_resource_policy.value,
        "verified_objects": len(copied) + len(skipped),
    }


def _copy(
    k: Kube, plural: str, src_ns: str, dest_ns: str, name: str, policy_: ExistingResourcePolicy
) -> bool:
    read = kube.kind_api(k, plural, "read")
    obj = k.call(f"read restored {plural} {src_ns}/{name}", read, name, src_ns)
    meta = obj.metadata
    meta.namespace = dest_ns
    meta.uid = meta.resource_version = meta.creation_timestamp = None
    meta.managed_fields = meta.owner_references = None
    if hasattr(obj, "status"):
        obj.status = None
    if plural == "services" and obj.spec is not None:  # cluster IPs are allocated per service
        obj.spec.cluster_ip = None
        obj.spec.cluster_ips = None
    try:
        k.call(f"create {plural} {dest_ns}/{name}", kube.kind_api(k, plural, "create"), dest_ns, obj)
        return True
    except kube.AlreadyExists:
        if policy_ is not ExistingResourcePolicy.update:
            return False
    current = k.call(f"read {plural} {dest_ns}/{name}", read, name, dest_ns)
    meta.resource_version = current.metadata.resource_version
    k.call(f"replace {plural} {dest_ns}/{name}", kube.kind_api(k, plural, "replace"), name, dest_ns, obj)
    return True


# -- drill -------------------------------------------------------------------------------------------------
SCALE_TO_ZERO = {
    "version": "v1",
    "resourceModifierRules": [
        {
            "conditions": {"groupResource": "deployments.apps", "resourceNameRegex": ".*"},
            "patches": [{"operation": "replace", "path": "/spec/replicas", "value": "0"}],
        }
    ],
}


def drill_namespaces(doc: dict[str, Any], drill_id: str) -> dict[str, str]:
    token = re.sub(r"[^a-z0-9-]", "-", drill_id.lower()).strip("-")[:30] or "x"
    sources = sorted(doc["inventory"])
    if len(sources) == 1:
        return {sources[0]: f"restore-drill-{token}"}
    return {ns: _aside_name("restore-drill", token, ns) for ns in sources}


def drill(target: VeleroTarget, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict[str, Any]:
    """Restore into `restore-drill-<id>` namespaces with every deployment at 0 replicas (the drill's
    apps must not talk to production), verify every object of the inventory, always clean up."""
    doc = load_document(store, manifest)
    k = connect(target.kube)
    preflight(k, target)
    get_backup_cr(k, target, doc["backup"]["metadata"]["name"])
    mapping = drill_namespaces(doc, drill_id)
    taken = [ns for ns in mapping.values() if kube.namespace_exists(k, ns)]
    if taken:
        raise BadInput(
            f"drill namespaces {taken} exist already (an earlier drill?): delete them or use another id"
        )
    modifier = f"klb-drill-{secrets.token_hex(4)}"
    created: list[str] = []
    try:
        k.call(
            f"create ConfigMap {modifier}",
            k.core.create_namespaced_config_map,
            target.namespace,
            {"metadata": {"name": modifier}, "data": {"rules.yaml": yaml.safe_dump(SCALE_TO_ZERO)}},
        )
        created = list(mapping.values())
        namespaces, _ = _plan(doc, RestoreOptions(namespace_mapping=mapping, restore_pvs=True))
        spec = {
            "backupName": doc["backup"]["metadata"]["name"],
            "includedNamespaces": namespaces,
            "namespaceMapping": mapping,
            "restorePVs": True,
            "existingResourcePolicy": "none",
            "resourceModifier": {"kind": "ConfigMap", "name": modifier},
        }
        cr = run_restore(k, target, spec["backupName"], spec, None, manifest.id)
        checks: dict[str, Any] = {}
        for ns, kinds_ in doc["inventory"].items():
            for plural, objs in kinds_.items():
                present = _present(k, mapping[ns], plural)
                missing = sorted(set(objs) - present)
                if missing:
                    raise IntegrityError(f"drill {drill_id}: {mapping[ns]}/{plural} lacks {missing[:10]}")
                checks[f"{ns}/{plural}"] = {"expected": len(objs), "restored": len(set(objs) & present)}
            running = [
                d.metadata.name for d in kube.list_deployments(k, mapping[ns]) if (d.spec.replicas or 0) != 0
            ]
            if running:
                raise IntegrityError(f"drill {drill_id}: deployments {running} in {mapping[ns]} are not at 0")
        return {
            "verified": True,
            "velero_restore": cr["metadata"]["name"],
            "namespaces": mapping,
            "checks": checks,
        }
    finally:
        for ns in created:
            try:
                kube.delete_namespace(k, ns, interval=target.poll_interval_seconds)
            except Exception as exc:
                log.error("could not delete drill namespace %s: %s", ns, exc)
        try:
            k.call(
                f"delete ConfigMap {modifier}",
                k.core.delete_namespaced_config_map,
                modifier,
                target.namespace,
            )
        except Exception as exc:
            log.debug("drill modifier %s: %s", modifier, exc)


def drill_cleanup(target: VeleroTarget, drill_id: str) -> None:
    """Delete the `restore-drill-<id>*` namespaces a crashed drill left."""
    k = connect(target.kube)
    token = re.sub(r"[^a-z0-9-]", "-", drill_id.lower()).strip("-")[:30] or "x"
    for ns in kube.list_namespaces(k):
        if ns == f"restore-drill-{token}" or ns.startswith(f"restore-drill-{token}-"):
            kube.delete_namespace(k, ns, interval=target.poll_interval_seconds)


# -- current state -----------------------------------------------------------------------------------------
def describe_current_state(target: VeleroTarget) -> dict[str, Any]:
    """Namespaces, object counts per kind, PVCs; and what Velero holds (pre-restore checklist)."""
    k = connect(target.kube)
    existing = kube.list_namespaces(k)
    wanted = (
        existing
        if "*" in target.include_namespaces or not target.include_namespaces
        else target.include_namespaces
    )
    state: dict[str, Any] = {"namespaces": {}, "pvcs": []}
    for ns in wanted:
        if ns not in existing:
            state["namespaces"][ns] = {"exists": False}
            continue
        counts = {plural: len(kube.list_names(k, ns, plural)) for plural in KINDS}
        state["namespaces"][ns] = {"exists": True, "counts": counts}
        state["pvcs"] += kube.list_pvcs(k, ns)
    try:
        bsl = preflight(k, target)
        backups = _call(k, "list Velero backups", "list", "backups", target.namespace)["items"]
        backups.sort(key=lambda b: (b.get("status") or {}).get("completionTimestamp") or "", reverse=True)
        state["velero"] = {
            "installed": True,
            "storage_location": {
                "name": target.storage_location,
                "phase": (bsl.get("status") or {}).get("phase"),
            },
            "recent_backups": [
                {"name": b["metadata"]["name"], "phase": (b.get("status") or {}).get("phase")}
                for b in backups[:5]
            ],
        }
    except ConfigurationError as exc:
        state["velero"] = {"installed": False, "error": str(exc)}
    return state
