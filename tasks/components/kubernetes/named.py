"""Partial restore of single named objects. Velero cannot select by name: the resource types are
restored aside into scratch namespaces, every named object is checked against what is in place
(if one of them cannot be put back, none is), and just those are copied into place."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import secrets
from typing import Any

from blocks.kubernetes import VeleroTarget
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes import claims, objects
from tasks.components.kubernetes.api import Kube, canonical_resource
from tasks.components.kubernetes.backups import safety_backup
from tasks.components.kubernetes.custom import is_custom
from tasks.components.kubernetes.ports import held_ports, keep_applied_ports, node_port_rules
from tasks.components.kubernetes.restores import ExistingResourcePolicy, RestoreOptions, expected_objects
from tasks.components.kubernetes.velero import run_restore
from tasks.components.kubernetes.written import nothing_written_note
from tasks.errors import BadInput, ComponentFailed, ConfigurationError, NotFound, target_untouched

log = logging.getLogger(__name__)


def aside_name(prefix: str, token: str, ns: str) -> str:
    """`<prefix>-<token>-<ns>`, a namespace name (<= 63), one per `ns`: a long one is cut short
    and keeps a hash of the whole (cut alone, two namespaces alike in their first characters
    were restored into one scratch namespace, and each got the first's copies)."""
    name = f"{prefix}-{token}-{ns}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(ns.encode()).hexdigest()[:6]
    keep = 63 - len(prefix) - len(token) - len(digest) - 3
    return f"{prefix}-{token}-{ns[:keep].rstrip('-')}-{digest}"


def restore_named(
    k: Kube,
    target: VeleroTarget,
    doc: dict[str, Any],
    options: RestoreOptions,
    namespaces: list[str],
    kinds: list[str],
    backup_id: str,
) -> dict[str, Any]:
    """Restore the resource types aside into a scratch namespace, check the named objects are
    there and can all be put in place, copy just those, and remove the scratch."""
    kinds, expected, uncopied = check_named(doc, options, namespaces, kinds)
    # Velero restores every object of a kind aside: only the kinds of the named objects, so a
    # ConfigMap's restore does not run copies of the namespace's apps (Deployments) there
    kinds = [p for p in kinds if any(p in kinds_ for kinds_ in expected.values())]
    # those beside copied ones of the same name (a Deployment and its ServiceAccount `hello`)
    not_copied = sorted(f"{options.namespace_mapping.get(ns, ns)}/{p}/{n}" for ns, p, n in uncopied)
    made = [  # before Velero restores anything aside
        f"namespace {dest}"
        for ns in expected
        if ensure_namespace(k, dest := options.namespace_mapping.get(ns, ns), target.poll_interval_seconds)
    ]
    token = secrets.token_hex(3)
    aside = {ns: aside_name("klb-aside", token, ns) for ns in expected}
    policy = options.existing_resource_policy
    copied, skipped, created, overwritten = [], [], [], []
    writing = False  # past it, something may have been written in place
    try:
        spec = {
            "backupName": doc["backup"]["metadata"]["name"],
            "includedNamespaces": list(expected),
            "includedResources": kinds,
            "namespaceMapping": aside,
            "restorePVs": False,
            "existingResourcePolicy": "none",
        }
        held = held_ports(k) if "services" in kinds else ({}, 0)
        with contextlib.ExitStack() as stack:
            # the copies stand beside the originals: no nodePort another Service holds (ports.py);
            # the fixed ports that are free stay, and go with the copies into place
            if "services" in kinds and (rules := node_port_rules(k, doc, list(expected), aside, held)):
                spec["resourceModifier"] = stack.enter_context(claims.resource_modifier(k, target, rules))
            cr = run_restore(k, target, spec["backupName"], spec, options.timeout_seconds, backup_id)
        copies = [
            (plural, dest, name, _read_copy(k, plural, aside[ns], name, held[0], dest))
            for ns, kinds_ in expected.items()
            for dest in [options.namespace_mapping.get(ns, ns)]
            for plural, objs in kinds_.items()
            for name in objs
        ]
        # the scratch copies go first: a Service's copy there holds the nodePorts its copy in
        # place asks for (a port kept by Velero, free in the cluster when it restored)
        _remove_scratch(k, target, list(aside.values()))
        # every write is checked before the first is made: never half put back
        refused = [
            r for plural, dest, name, obj in copies if (r := _refused(k, plural, dest, name, obj, policy))
        ]
        if refused:
            raise BadInput("; ".join(refused) + ". Nothing was changed")
        rollback = None
        if policy is ExistingResourcePolicy.update:
            rollback = safety_backup(k, target, sorted({dest for _, dest, _, _ in copies}), backup_id)
        writing = True
        for plural, dest, name, obj in copies:
            outcome = _put(k, plural, dest, name, obj, policy)
            key = f"{dest}/{plural}/{name}"
            (copied if outcome else skipped).append(key)
            if outcome:
                (created if outcome == "created" else overwritten).append(key)
    except Exception as exc:
        if writing:
            raise
        _unmake(k, target, made, exc)  # nothing in place yet: the namespaces it made go too
        raise target_untouched(exc) from None
    finally:
        _remove_scratch(k, target, list(aside.values()), log_only=True)
    report = {
        "velero_backup": doc["backup"]["metadata"]["name"],
        "velero_restore": cr["metadata"]["name"],
        "phase": "Completed",
        "restored_objects": copied,
        "already_existed": skipped,
        "rollback_velero_backup": rollback,
        "existing_resource_policy": policy.value,
        "verified_objects": len(copied) + len(skipped),
        "created": made + created,
        "overwritten": overwritten,
    }
    if not_copied:
        report["not_copied"] = not_copied
        log.warning(
            "restore by name: %s share a name asked for but are of kinds a restore by name does not "
            "copy (RBAC objects, custom resources): restore their namespace without names if they "
            "are needed",
            not_copied,
        )
    if not report["created"] and not overwritten:
        report["note"] = nothing_written_note(policy.value)
        log.warning(report["note"])
    return report


def check_named(
    doc: dict[str, Any], options: RestoreOptions, namespaces: list[str], kinds: list[str]
) -> tuple[list[str], dict[str, dict[str, list[str]]], list[tuple[str, str, str]]]:
    """-> (the kinds copied, the named objects per namespace and kind, the named objects of
    kinds not copied as (namespace, kind, name)); BadInput for a single PVC or a name the backup
    does not hold."""
    ignored = [
        option
        for option, given in (
            ("label_selector", options.label_selector),
            ("include_cluster_resources", options.include_cluster_resources),
            ("restore_pvs", options.restore_pvs),
        )
        if given
    ]
    if ignored:  # the objects are picked by name alone, aside, and only built-in kinds copied
        raise BadInput(
            f"{', '.join(ignored)} cannot go with names: a restore by name copies the named objects "
            "of the built-in kinds, whatever their labels, and no cluster-scoped object or volume "
            "data. Restore without names to use them, or drop them; nothing was done"
        )
    if (
        "persistentvolumeclaims" in kinds
        and options.resources
        and "persistentvolumeclaims" in {canonical_resource(r) for r in options.resources}
    ):
        raise BadInput(
            "single PVCs cannot be copied between namespaces with their data: use the data_corruption flow"
        )
    # ServiceAccounts, Roles, RoleBindings (no RBAC writes) and custom resources are not copied
    # by name (api.COPIED_KINDS)
    uncopied = sorted(
        (ns, p, n)
        for ns, kinds_ in expected_objects(
            doc, namespaces, [p for p in kinds if p not in kube.COPIED_KINDS], options.names
        ).items()
        for p, objs in kinds_.items()
        for n in objs
    )
    kinds = [p for p in kinds if p != "persistentvolumeclaims" and p in kube.COPIED_KINDS]
    expected = expected_objects(doc, namespaces, kinds, options.names)
    found = {n for kinds_ in expected.values() for objs in kinds_.values() for n in objs}
    absent = sorted(set(options.names or []) - found)
    held = [f"{ns}/{p}/{n}" for ns, p, n in uncopied if n in absent]
    if held:  # names asked for that only uncopied kinds hold
        custom = [p for _, p, n in uncopied if n in absent and is_custom(p)]
        what = (
            "custom resources (a Knative Service, say), which a restore by name does not copy (the "
            "flows may write only the built-in kinds they copy)"
            if custom
            else "ServiceAccounts, Roles or RoleBindings, which a restore by name does not copy "
            "(the flows may not write RBAC objects)"
        )
        raise BadInput(f"objects {held} are {what}: restore their namespace without names; nothing was done")
    if absent:
        raise BadInput(f"objects {absent} of types {kinds} are not in the backup's namespaces {namespaces}")
    return kinds, expected, uncopied


def ensure_namespace(k: Kube, name: str, interval: float = 2) -> bool:
    """The destination of copied objects exists, or is made (-> True: made). The shipped flow
    account may not create namespaces (rbac.yaml; drill-namespace-policy.yaml admits
    klb-aside-*/restore-drill-* only), and could not write in a new one without a
    klb-flow-runner-apps RoleBinding there. A Terminating one refuses new objects and is losing
    its own: it is waited for and made anew, as Velero does for a whole namespace."""
    if kube.namespace_active(k, name):
        return False
    if kube.namespace_exists(k, name):
        log.info("namespace %s is terminating: waiting for it to go to make it anew", name)
        kube.wait_gone(k, name, interval=interval)
    try:
        kube.create_namespace(k, name)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"namespace {name} does not exist and this account may not create it ({exc}). Create it "
            f"(kubectl create namespace {name}), bind the ClusterRole klb-flow-runner-apps there with a "
            "RoleBinding (deployments/k8s/rbac.yaml), then run the restore again"
        ) from None
    return True


def _unmake(k: Kube, target: VeleroTarget, made: list[str], failure: Exception) -> None:
    """Delete the namespaces this restore made ("namespace <name>") for copies it never wrote, so
    a refused or failed restore leaves the cluster as it was; one that cannot go makes the
    failure say so (a "Nothing was changed" would be untrue) and what to do."""
    for ns in (m.removeprefix("namespace ") for m in made):
        try:
            kube.delete_namespace(k, ns, interval=target.poll_interval_seconds)
        except Exception as exc:
            raise ComponentFailed(
                f"{failure}. But namespace {ns}, made by this restore for its copies, could not be "
                f"removed ({exc}): delete it (kubectl delete namespace {ns})"
            ) from None


def _remove_scratch(k: Kube, target: VeleroTarget, namespaces: list[str], log_only: bool = False) -> None:
    """Delete the scratch namespaces and wait until they are gone (their Services' ports free)."""
    for ns in namespaces:
        try:
            kube.delete_namespace(k, ns, interval=target.poll_interval_seconds)
        except Exception as exc:
            if not log_only:
                raise
            log.error("could not delete scratch namespace %s: %s", ns, exc)


def _read_copy(
    k: Kube, plural: str, src_ns: str, name: str, taken: dict[int, tuple[str, str]], dest: str
) -> dict[str, Any]:
    """The object Velero restored aside, whole (raw JSON: objects.py), without what the server
    sets or allocates but the nodePorts Velero kept (ports.py)."""
    obj = objects.read(k, plural, src_ns, name)
    if obj is None:
        raise NotFound(f"read restored {plural} {src_ns}/{name}: not found in the scratch namespace")
    spec = obj.get("spec") or {}
    if plural == "services":
        # allocated by the server, unique per cluster: a copy asking for the same one is refused
        # (422 "provided IP is already allocated"); Velero's service action drops it too
        if spec.get("clusterIP") != "None":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        # the nodePorts kept are those Velero kept (`kubectl apply` fixed them) that no Service
        # held (`taken`): the scratch copy frees them before the copy in place asks for them;
        # the others were allocated for the scratch copy (read before managedFields go)
        keep_applied_ports(obj, taken, (dest, name))
    return objects.copy_of(obj, dest)


def _conflict(
    plural: str, ns: str, name: str, obj: dict[str, Any], current: dict[str, Any] | None
) -> str | None:
    """Why the API would refuse to replace `current` with `obj` (an immutable field), or None."""
    if current is None:
        return None
    same = (current.get("data"), current.get("binaryData")) == (obj.get("data"), obj.get("binaryData"))
    if current.get("immutable") and not same:
        # the API refuses any change to the data of an immutable ConfigMap/Secret (422)
        return (
            f"{ns}/{plural}/{name} is immutable (immutable: true) and differs from the backup: "
            f"delete it (kubectl -n {ns} delete {plural} {name}) and run the restore again, "
            "which then creates it from the backup"
        )
    selectors = [(o.get("spec") or {}).get("selector") for o in (current, obj)]
    if plural == "deployments" and selectors[0] != selectors[1]:
        return (
            f"{ns}/{plural}/{name} has another spec.selector than the backup, and a selector is "
            f"immutable: delete it (kubectl -n {ns} delete {plural} {name}) and run the restore again"
        )
    return None


def _replacing(obj: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """`obj` as the replacement of `current`: at its resourceVersion (a change meanwhile is 409)."""
    body = copy.deepcopy(obj)
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    return body


def _refused(
    k: Kube, plural: str, ns: str, name: str, obj: dict[str, Any], policy_: ExistingResourcePolicy
) -> str | None:
    """Why the API server would refuse the write _put makes, or None. Asked of the server itself,
    as a dry run (its validation, immutable fields, admission, quota): a list of our own missed
    some (a Secret's type never changes), and the copy went in half put back."""
    current = objects.read(k, plural, ns, name)
    if current is not None and policy_ is not ExistingResourcePolicy.update:
        return None  # left as it is
    said = _conflict(plural, ns, name, obj, current)  # the refusals we can say more about
    if said:
        return said
    try:
        if current is None:
            objects.create(k, plural, ns, obj, dry_run=True)
        else:
            objects.replace(k, plural, ns, _replacing(obj, current), dry_run=True)
    except kube.AlreadyExists:  # made or changed meanwhile: _put reads it again
        return None
    except BadInput as exc:
        if current is None:
            return f"{ns}/{plural}/{name} cannot be created as the backup has it ({exc})"
        return (
            f"{ns}/{plural}/{name} cannot be replaced by the backup's ({exc}): delete it (kubectl -n "
            f"{ns} delete {plural} {name}) and run the restore again, which then creates it from the backup"
        )
    return None


def _put(
    k: Kube, plural: str, ns: str, name: str, obj: dict[str, Any], policy_: ExistingResourcePolicy
) -> str | None:
    """Create `obj` in `ns`; an existing one is replaced only with policy update.
    -> "created", "replaced", or None (it existed and was left as it is)."""
    try:
        objects.create(k, plural, ns, obj)
        return "created"
    except kube.AlreadyExists:
        if policy_ is not ExistingResourcePolicy.update:
            return None
    for attempt in range(3):
        current = objects.read(k, plural, ns, name)
        if current is None:  # deleted since: create it
            objects.create(k, plural, ns, obj)
            return "created"
        refused = _conflict(plural, ns, name, obj, current)  # changed since the check
        if refused:
            raise BadInput(refused)
        try:
            objects.replace(k, plural, ns, _replacing(obj, current))
            return "replaced"
        except kube.AlreadyExists:  # 409 Conflict: changed since we read it; read it again
            if attempt == 2:
                raise
    return "replaced"
