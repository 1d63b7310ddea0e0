"""Restore from our record of a Velero backup, and verify the objects are where expected.

Restoring single named objects: Velero cannot select by name, so the resource types are restored
aside into a scratch namespace and just the named objects are copied into place.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator

from blocks.kubernetes import VeleroTarget
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes import claims
from tasks.components.kubernetes.api import Kube, canonical_resource, connect
from tasks.components.kubernetes.backups import BackupSpec, _kinds, load_document
from tasks.components.kubernetes.velero import (
    BACKUP_TERMINAL,
    _call,
    _status_text,
    _wait,
    get_backup_cr,
    id_metadata,
    preflight,
    run_restore,
)
from tasks.errors import BadInput, ComponentFailed, ConfigurationError, IntegrityError
from tasks.models import Manifest

log = logging.getLogger(__name__)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


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
    target: VeleroTarget,
    manifest: Manifest,
    store: StoreBlock,
    options: RestoreOptions,
    helper_pods: bool = False,
) -> dict[str, Any]:
    return restore_document(target, load_document(store, manifest), options, manifest.id, helper_pods)


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
    target: VeleroTarget,
    doc: dict[str, Any],
    options: RestoreOptions,
    backup_id: str = "",
    helper_pods: bool = False,
) -> dict[str, Any]:
    """Restore from our record of a Velero backup; verify the objects are where expected, and
    wait for the restored PVCs to bind. `helper_pods`: the backup's pods come back only as
    volume-restore helpers (claims.py), removed once their data is in."""
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
    token = secrets.token_hex(4)
    targets = [mapping.get(ns, ns) for ns in namespaces]
    with contextlib.ExitStack() as stack:
        if helper_pods:
            spec["resourceModifier"] = stack.enter_context(
                claims.resource_modifier(k, target, claims.helper_pod_rules(token))
            )
        cr = run_restore(k, target, name, spec, options.timeout_seconds, backup_id)
    limit = options.timeout_seconds or target.restore_timeout_seconds
    if helper_pods:
        claims.remove_helpers(k, target, targets, token, limit)
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
    volumes = claims.wait_bound(
        k,
        target,
        [
            (mapping.get(ns, ns), pvc)
            for ns, kinds_ in expected.items()
            for pvc in kinds_.get("persistentvolumeclaims", [])
        ],
        limit,
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
        "claims": volumes,
    }
    if rollback:
        report["rollback_velero_backup"] = rollback
    if skipped and options.existing_resource_policy is ExistingResourcePolicy.none:
        report["note"] = (
            f"{len(skipped)} objects already existed and were left as they are (existing_resource_policy="
            "none): delete them first, or restore with existing_resource_policy=update"
        )
        log.warning(report["note"])
    elif report["warnings"] and options.existing_resource_policy is ExistingResourcePolicy.update:
        # a refused update (an immutable field) is only a warning to Velero, which still says
        # Completed (restore.go processUpdateResourcePolicy): those objects are not the backup's
        report["note"] = (
            f"Velero could not update {report['warnings']} existing objects (warnings; e.g. immutable "
            "fields): they keep their in-cluster version. List them with `velero restore describe "
            f"{report['velero_restore']} --details`, delete them, and restore again"
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
    metadata = id_metadata(backup_id, {"klb.io/purpose": "pre-restore"})
    body = BackupSpec(include_namespaces=present).cr(name, target, timedelta(days=7), metadata)
    _call(k, f"create Velero backup {name}", "create", "backups", target.namespace, body)
    cr, done = _wait(k, target, "backups", name, BACKUP_TERMINAL, target.backup_timeout_seconds)
    if not done or cr["status"]["phase"] != "Completed":
        raise ComponentFailed(
            f"the safety backup {name} of {present} before overwriting them did not complete "
            f"({_status_text(cr)}): nothing was restored"
        )
    log.info("safety backup %s of %s taken before overwriting", name, present)
    return name


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
    for ns in expected:  # before Velero restores anything aside
        _ensure_namespace(k, options.namespace_mapping.get(ns, ns))
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


def _ensure_namespace(k: Kube, name: str) -> None:
    """The destination of copied objects exists, or is made. The shipped flow account may not
    create namespaces (rbac.yaml; drill-namespace-policy.yaml admits klb-aside-*/restore-drill-*
    only), and could not write in a new one without a klb-flow-runner-apps RoleBinding there."""
    if kube.namespace_exists(k, name):
        return
    try:
        kube.create_namespace(k, name)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"namespace {name} does not exist and this account may not create it ({exc}). Create it "
            f"(kubectl create namespace {name}), bind the ClusterRole klb-flow-runner-apps there with a "
            "RoleBinding (deployments/k8s/rbac.yaml), then run the restore again"
        ) from None


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
    if plural == "services" and obj.spec is not None:
        # allocated by the server, unique per cluster: a copy asking for the same ones is refused
        # (422 "provided port is already allocated"); Velero's service action drops them too
        if obj.spec.cluster_ip != "None":
            obj.spec.cluster_ip = None
            obj.spec.cluster_ips = None
        obj.spec.health_check_node_port = None
        for port in obj.spec.ports or []:
            port.node_port = None
    try:
        k.call(f"create {plural} {dest_ns}/{name}", kube.kind_api(k, plural, "create"), dest_ns, obj)
        return True
    except kube.AlreadyExists:
        if policy_ is not ExistingResourcePolicy.update:
            return False
    for attempt in range(3):
        current = k.call(f"read {plural} {dest_ns}/{name}", read, name, dest_ns)
        binary = getattr(current, "binary_data", None), getattr(obj, "binary_data", None)
        if getattr(current, "immutable", None) and (current.data != obj.data or binary[0] != binary[1]):
            # the API refuses any change to the data of an immutable ConfigMap/Secret (422)
            raise BadInput(
                f"{dest_ns}/{plural}/{name} is immutable (immutable: true) and differs from the backup: "
                f"delete it (kubectl -n {dest_ns} delete {plural} {name}) and run the restore again, "
                "which then creates it from the backup"
            )
        meta.resource_version = current.metadata.resource_version
        try:
            k.call(
                f"replace {plural} {dest_ns}/{name}", kube.kind_api(k, plural, "replace"), name, dest_ns, obj
            )
            return True
        except kube.AlreadyExists:  # 409 Conflict: changed since we read it; read it again
            if attempt == 2:
                raise
    return True
