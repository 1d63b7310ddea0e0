"""Restore from our record of a Velero backup, and verify the objects are where expected.
Single named objects are restored by named.py.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator

from blocks.kubernetes import VeleroTarget
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes import claims, custom, labels, written
from tasks.components.kubernetes.api import Kube, canonical_resource, connect
from tasks.components.kubernetes.backups import _kinds, load_document, safety_backup
from tasks.components.kubernetes.discovery import as_kinds, check_resource_names
from tasks.components.kubernetes.ports import node_port_rules
from tasks.components.kubernetes.prechecks import check_mapping, refuse_live_targets
from tasks.components.kubernetes.velero import get_backup_cr, preflight, run_restore
from tasks.errors import BackupError, BadInput, ComponentFailed, IntegrityError, target_untouched
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
    include_cluster_resources: bool | None = Field(
        default=None,
        description="cluster-scoped objects (CRDs, ClusterRoles, PVs...); default: with the whole backup",
    )
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
    misspelt = sorted(set(options.exclude_namespaces) - set(in_backup))
    if misspelt:  # it would exclude nothing: the namespace meant is restored too
        raise BadInput(
            f"exclude_namespaces {misspelt} are not in Velero backup {doc['backup']['metadata']['name']}: "
            f"it holds {in_backup}; name the namespaces to leave out as the backup has them"
        )
    wanted = [n for n in wanted if n not in options.exclude_namespaces]
    if not wanted:  # Velero reads an empty includedNamespaces as "all of them"
        raise BadInput("the exclusions leave no namespace to restore")
    unknown = sorted(set(options.namespace_mapping) - set(wanted))
    if unknown:
        raise BadInput(f"namespace_mapping names {unknown}, which this restore does not include")
    check_mapping(wanted, options.namespace_mapping)
    kinds = _kinds(options.resources or [], options.exclude_resources)
    # the custom kinds (Knative Services, ...) the backup's inventory holds (custom.py)
    held = sorted({kind for kinds_ in doc["inventory"].values() for kind in kinds_ if custom.is_custom(kind)})
    kinds += custom.wanted(held, options.resources or [], options.exclude_resources)
    if (
        not options.names
        and "persistentvolumeclaims" in kinds
        and "persistentvolumes" in {canonical_resource(r) for r in options.exclude_resources}
    ):
        raise BadInput(
            "exclude_resources names persistentvolumes but the restore brings back claims: Velero "
            "would leave them Pending, waiting for their PVs. Exclude persistentvolumeclaims too"
        )
    return wanted, kinds


def resolved(k: Kube, options: RestoreOptions) -> RestoreOptions:
    """`options` with its resource type names as Velero resolves them (discovery.as_kinds)."""
    if not options.resources and not options.exclude_resources:
        return options
    return options.model_copy(
        update={
            "resources": as_kinds(k, options.resources),
            "exclude_resources": as_kinds(k, options.exclude_resources),
        }
    )


def velero_resources(options: RestoreOptions) -> list[str] | None:
    """includedResources for Velero: claims always with their PVs. Velero resets a claim's
    volumeName (or makes its PV from the snapshot) only for a PV it restores, and restores
    file-system data only when both are included (restore.go), so claims alone would wait for
    ever for a PV that is not there."""
    if not options.resources:
        return None
    asked = {canonical_resource(r) for r in options.resources}
    if "persistentvolumeclaims" in asked and not asked & {"persistentvolumes", "*"}:
        return [*options.resources, "persistentvolumes"]
    return options.resources


def expected_objects(
    doc: dict[str, Any], namespaces: list[str], kinds: list[str], names: list[str] | None
) -> dict:
    """(target namespace unmapped) -> kind -> names the backup holds and the restore asks for; not
    the objects the cluster makes in every namespace (recorded by inventories older than
    kube.CLUSTER_MANAGED): they are there whatever Velero does with its copies."""
    out: dict[str, dict[str, list[str]]] = {}
    for ns in namespaces:
        for plural in kinds:
            held = kube.workload_names(plural, doc["inventory"].get(ns, {}).get(plural, []))
            picked = [n for n in held if names is None or n in names]
            if picked:
                out.setdefault(ns, {})[plural] = picked
    return out


def _present(k: Kube, ns: str, plural: str, unserved: set[str] | None = None) -> set[str]:
    """The names of kind `plural` in `ns` now; a custom kind the cluster does not serve (its CRD
    missing) holds none, and goes into `unserved`."""
    if not kube.namespace_active(k, ns):  # a Terminating namespace's objects are going
        return set()
    if custom.is_custom(plural):
        names = custom.list_names(k, ns, plural)
        if names is None and unserved is not None:
            unserved.add(plural)
        return set(names or [])
    return set(kube.list_names(k, ns, plural))


def restore_document(
    target: VeleroTarget,
    doc: dict[str, Any],
    options: RestoreOptions,
    backup_id: str = "",
    helper_pods: bool = False,
    mapping_aside: bool = True,
) -> dict[str, Any]:
    """Restore from our record of a Velero backup; verify the objects are where expected, and
    wait for the restored PVCs to bind. `helper_pods`: the backup's pods come back only as
    volume-restore helpers (claims.py), removed once their data is in. `mapping_aside`: a
    namespace_mapping goes into new namespaces only (component volumes puts the claims into
    the mapped namespace the kubernetes step of a full restore made)."""
    k = connect(target.kube)
    name = doc["backup"]["metadata"]["name"]
    try:  # refused before anything is created: the target is as it was
        preflight(k, target)
        get_backup_cr(k, target, name)  # unknown/expired backup: a clear error first
        check_resource_names(k, resources=options.resources, exclude_resources=options.exclude_resources)
        # planned with the names as Velero resolves them; Velero is given them as spelt
        planned = resolved(k, options)
        namespaces, kinds = _plan(doc, planned)
        if mapping_aside and not options.names:  # named objects are copied in, where they may exist
            refuse_live_targets(k, options.namespace_mapping, namespaces)
        if helper_pods and not options.names:  # removed afterwards: may they be?
            claims.check_helpers_removable(k, [options.namespace_mapping.get(ns, ns) for ns in namespaces])
    except BackupError as exc:
        raise target_untouched(exc) from None
    if options.names:
        # named.py builds on this module (its options): imported here, not at the top
        from tasks.components.kubernetes.named import restore_named

        return restore_named(k, target, doc, planned, namespaces, kinds, backup_id)
    # what the restore may write (whatever its label selector picks): seen before and after
    scope = expected_objects(doc, namespaces, kinds, None)
    expected = scope
    if options.label_selector:  # those the selector picks, by their labels at backup time
        expected = labels.selected(doc, scope, options.label_selector) or {}
        if not expected:
            log.info(
                "label selector %s: a backup without its labels recorded, not verified",
                options.label_selector,
            )
    mapping = options.namespace_mapping
    merging = namespaces if "serviceaccounts" in kinds else []  # Velero merges those that exist
    before = written.scope_before(k, scope, mapping, merging)
    spec: dict[str, Any] = {
        "backupName": name,
        "includedNamespaces": namespaces,
        "excludedNamespaces": options.exclude_namespaces,
        "namespaceMapping": mapping,
        "existingResourcePolicy": options.existing_resource_policy.value,
    }
    if options.resources:
        spec["includedResources"] = velero_resources(options)
    if options.exclude_resources:
        spec["excludedResources"] = options.exclude_resources
    if options.restore_pvs is not None:
        spec["restorePVs"] = options.restore_pvs
    if options.label_selector:
        spec["labelSelector"] = {"matchLabels": options.label_selector}
    if options.include_cluster_resources is not None:
        spec["includeClusterResources"] = options.include_cluster_resources
    elif not options.exclude_namespaces and not mapping and set(namespaces) >= set(doc["inventory"]):
        # the whole backup: its cluster-scoped objects too (CRDs, ClusterRoles, ...). We name the
        # namespaces, and Velero leaves cluster-scoped objects out of a restore of named
        # namespaces unless asked (restore.go getOrderedResourceCollection), so a full-cluster
        # restore brought back no CRD and no ClusterRole(Binding) of the backup
        spec["includeClusterResources"] = True
    cluster = written.cluster_scoped_possible(doc, spec)
    rollback = None
    if options.existing_resource_policy is ExistingResourcePolicy.update:
        # the safety copy covers whatever the restore may overwrite: with cluster-scoped objects
        # in the restore, all of them (a copy of the namespaces alone left nothing to put a
        # ClusterRole or CRD back from)
        rollback = safety_backup(
            k,
            target,
            [mapping.get(ns, ns) for ns in namespaces],
            backup_id,
            cluster=bool(spec.get("includeClusterResources")),
        )
    token = secrets.token_hex(4)
    targets = [mapping.get(ns, ns) for ns in namespaces]
    rules = claims.helper_pod_rules(token) if helper_pods else []
    if "services" in kinds:  # nodePorts Velero keeps that another Service holds now (ports.py)
        rules += node_port_rules(k, doc, namespaces, mapping)
    with contextlib.ExitStack() as stack:
        if rules:
            spec["resourceModifier"] = stack.enter_context(claims.resource_modifier(k, target, rules))
        try:
            cr = run_restore(k, target, name, spec, options.timeout_seconds, backup_id)
        except ComponentFailed as exc:
            _tell_written(exc, k, getattr(exc, "velero_restore", None), before, scope, mapping, cluster)
            if hasattr(exc, "partial_report"):
                exc.partial_report.update(_resolved(options, planned))
            raise
    limit = options.timeout_seconds or target.restore_timeout_seconds
    if (cr.get("status") or {}).get("progress", {}).get("totalItems") == 0:
        # nothing in the backup matched (a label selector or resource type that matches no
        # object): Velero says Completed, and with nothing expected nothing was missing
        raise target_untouched(
            BadInput(
                f"Velero restore {cr['metadata']['name']} matched no object of backup {name} "
                f"(namespaces {namespaces}, resources {options.resources or 'all'}, label selector "
                f"{options.label_selector or 'none'}): nothing was restored. Check the filters against "
                f"`velero backup describe {name} --details`"
            )
        )
    if helper_pods:
        claims.remove_helpers(k, target, targets, token, limit)
    unserved: set[str] = set()  # custom kinds the cluster does not serve (their CRD missing)
    missing = {
        f"{mapping.get(ns, ns)}/{plural}/{obj}"
        for ns, kinds_ in expected.items()
        for plural, objs in kinds_.items()
        for obj in sorted(set(objs) - _present(k, mapping.get(ns, ns), plural, unserved))
    }
    if missing:
        exc = IntegrityError(
            f"Velero restore {cr['metadata']['name']} Completed but these objects are missing: "
            f"{sorted(missing)[:20]}: see `velero restore describe {cr['metadata']['name']} --details`."
            + (custom.missing_crd_hint(unserved) if unserved else "")
        )
        _tell_written(exc, k, cr["metadata"]["name"], before, scope, mapping, cluster)
        raise exc
    skipped = sorted(
        key
        for ns, kinds_ in expected.items()
        for plural, objs in kinds_.items()
        if plural not in kube.MERGED_KINDS  # Velero merges these into the cluster's
        for obj in objs
        if (key := f"{mapping.get(ns, ns)}/{plural}/{obj}") in before.objects
    )
    wrote = written.velero_written(k, cr["metadata"]["name"], before, scope, mapping, cluster)
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
        **wrote,
    }
    if rollback:
        report["rollback_velero_backup"] = rollback
    report.update(_resolved(options, planned))
    if not wrote["created"] and not wrote["overwritten"]:
        report["note"] = written.nothing_written_note(options.existing_resource_policy.value)
        log.warning(report["note"])
    elif skipped and options.existing_resource_policy is ExistingResourcePolicy.none:
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


def _resolved(options: RestoreOptions, planned: RestoreOptions) -> dict[str, Any]:
    """Resource names as Velero resolved them, where spelt otherwise: a rollback narrows by them."""
    names = {f: getattr(planned, f) for f in ("resources", "exclude_resources")}
    if all(getattr(options, f) == v for f, v in names.items()):
        return {}
    return {"resolved_resources": {f: v for f, v in names.items() if v}}


def _tell_written(exc: Exception, k: Kube, restore_name: str | None, *seen: Any) -> None:
    """A restore that failed once Velero's Restore had ended carries what it wrote (its
    `partial_report`): the checklist records it, and a rollback puts back only that. Not one
    that timed out (Velero may still be writing), nor when the cluster cannot tell."""
    if restore_name:
        with contextlib.suppress(BackupError):
            exc.partial_report = {  # type: ignore[attr-defined]
                "velero_restore": restore_name,
                **written.velero_written(k, restore_name, *seen),
            }
