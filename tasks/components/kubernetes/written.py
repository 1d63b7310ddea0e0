"""What one Velero restore wrote to the cluster: the objects it created, those it overwrote, the
namespaces it made. With existing_resource_policy `none` (the default) Velero leaves an object
that exists as it is, so a restore whose objects all exist writes nothing; it was recorded as
`restored` all the same, and its rollback put the safety backup over objects it never touched.
The checklist records from this whether the target changed, and a rollback what it may put back.

Velero labels every object it creates or updates with `velero.io/restore-name` (restore.go
addRestoreLabels), and an object it leaves as it is keeps its own labels. So an object of the
restore's scope that carries this restore's label was written by it: created if it was not there
before, overwritten if it was. A ServiceAccount that exists is merged instead, whatever the policy
(mergeServiceAccounts), by a patch computed from the in-cluster object already given those labels,
so it carries none: the ServiceAccounts the restore may merge into (the scope's and each
namespace's `default`) are read before and after it, and one whose secrets, pull secrets, labels
or annotations grew is overwritten too, with what was merged in (`merged`). A rollback cannot
take that away (Velero's merge only adds): it leaves it, and says so. Seen are the kinds the
inventory lists (api.KINDS and custom.py's); cluster-scoped objects are not listed, and a restore
that may have brought some back says so in `created`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes.api import Kube
from tasks.errors import BadInput, TransientError

RESTORE_NAME = "velero.io/restore-name"
CLUSTER_SCOPED = "cluster-scoped objects"  # in `created` when the restore may have written some


@dataclass
class Before:
    """The restore's target namespaces that were active, and their objects of its scope there."""

    namespaces: set[str]
    objects: set[str]  # "<target ns>/<plural>/<name>"
    # "<target ns>/serviceaccounts/<name>" -> what a merge adds to (merge_fields), of those that
    # existed and the restore may merge into
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)


def scope_before(
    k: Kube,
    scope: dict[str, dict[str, list[str]]],
    mapping: dict[str, str],
    merging: list[str] | tuple[str, ...] = (),
) -> Before:
    """`scope`: source namespace -> kind -> the names the restore may write (the backup's).
    `merging`: the source namespaces whose ServiceAccounts it restores: the scope's and the
    `default` one (the cluster's, out of every scope, yet Velero merges the backup's into it)."""
    namespaces, objects, accounts = set(), set(), {}
    for ns in sorted(set(scope) | set(merging)):
        dest = mapping.get(ns, ns)
        if not kube.namespace_active(k, dest):  # a Terminating one is made anew: its objects go
            continue
        namespaces.add(dest)
        for plural, names in scope.get(ns, {}).items():
            there = set(kube.list_names(k, dest, plural))
            objects |= {f"{dest}/{plural}/{n}" for n in names if n in there}
        if ns in merging:
            watched = {"default", *scope.get(ns, {}).get("serviceaccounts", [])}
            accounts |= {
                f"{dest}/serviceaccounts/{name}": fields
                for name, fields in _accounts(k, dest).items()
                if name in watched
            }
    return Before(namespaces, objects, accounts)


def _accounts(k: Kube, ns: str) -> dict[str, dict[str, Any]]:
    """name -> merge_fields of the ServiceAccounts in `ns` (whole objects: they name secrets and
    hold none of their data; raw JSON, compared as the API serves it)."""
    what = f"list serviceaccounts in {ns}"
    resp = k.call(what, k.core.list_namespaced_service_account, ns, _preload_content=False)
    try:
        items = json.loads(resp.data)["items"] or []
    except (ValueError, KeyError, TypeError):
        raise TransientError(f"{what}: the API server sent an unreadable list") from None
    return {i["metadata"]["name"]: merge_fields(i) for i in items}


def merge_fields(account: dict[str, Any]) -> dict[str, Any]:
    """What Velero's mergeServiceAccounts adds to: secret and pull-secret names, labels and
    annotations (not the restore's own labels: a merge never writes them)."""
    meta = account.get("metadata") or {}
    return {
        "secrets": [r.get("name") for r in account.get("secrets") or []],
        "imagePullSecrets": [r.get("name") for r in account.get("imagePullSecrets") or []],
        "labels": {k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith("velero.io/")},
        "annotations": dict(meta.get("annotations") or {}),
    }


def merged_in(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What `after` holds that `before` did not: {} when the ServiceAccount was left identical."""
    added: dict[str, Any] = {}
    for refs in ("secrets", "imagePullSecrets"):
        if new := [n for n in after[refs] if n not in before[refs]]:
            added[refs] = new
    for part in ("labels", "annotations"):
        if new := {k: v for k, v in after[part].items() if before[part].get(k) != v}:
            added[part] = new
    return added


def _merged(k: Kube, before: Before) -> dict[str, dict[str, Any]]:
    """The ServiceAccounts of `before.accounts` that changed since, with what was merged in."""
    out: dict[str, dict[str, Any]] = {}
    for dest in sorted({key.split("/", 1)[0] for key in before.accounts}):
        now = _accounts(k, dest) if kube.namespace_exists(k, dest) else {}
        for key, fields in before.accounts.items():
            name = key.split("/", 2)[2]
            if key.startswith(f"{dest}/") and name in now and (added := merged_in(fields, now[name])):
                out[key] = added
    return out


def cluster_scoped_possible(doc: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether the restore (its spec) includes cluster-scoped objects, of a kind it restores, and
    the backup may hold some: Velero backs them up with includeClusterResources, or by default
    when it backs up every namespace (backup_types.go)."""
    if not spec.get("includeClusterResources"):
        return False
    asked = {kube.canonical_resource(r) for r in spec.get("includedResources") or ["*"]}
    # the kinds surely namespaced: ours, pods, and the custom kinds the inventory holds (listed
    # in namespaces); namespaces are reported on their own. Any other name may be cluster-scoped
    held = {kind for kinds in (doc.get("inventory") or {}).values() for kind in kinds}
    if asked <= set(kube.KINDS) | held | {"pods", "namespaces"}:
        return False  # only namespaced kinds: no cluster-scoped object can be written
    backed = (doc.get("backup") or {}).get("spec") or {}
    given = backed.get("includeClusterResources")
    if given is not None:
        return bool(given)
    return backed.get("includedNamespaces") in (None, [], ["*"])


def velero_written(
    k: Kube,
    restore_name: str,
    before: Before,
    scope: dict[str, dict[str, list[str]]],
    mapping: dict[str, str],
    cluster: bool = False,
) -> dict[str, Any]:
    """-> {"created": [...], "overwritten": [...]} of a Velero restore named `restore_name` that
    has ended, from what was there `before` and the restore's label on what is there now; and
    `merged` (key -> what was added) when it merged into ServiceAccounts that existed."""
    created: list[str] = []
    overwritten: list[str] = []
    selector = f"{RESTORE_NAME}={restore_name}"
    for ns, kinds in scope.items():
        dest = mapping.get(ns, ns)
        if not kube.namespace_exists(k, dest):
            continue
        if dest not in before.namespaces:
            created.append(f"namespace {dest}")
        for plural, names in sorted(kinds.items()):
            labelled = set(kube.list_names(k, dest, plural, selector))
            for name in names:
                key = f"{dest}/{plural}/{name}"
                if name in labelled:
                    (overwritten if key in before.objects else created).append(key)
    merged = _merged(k, before)
    overwritten += [key for key in merged if key not in overwritten]
    if cluster:
        created.append(
            f"{CLUSTER_SCOPED} of the backup that were missing (CRDs, ClusterRoles, PVs...: not "
            f"listed; `kubectl get <kind> -l {selector}` shows them)"
        )
    return {"created": created, "overwritten": overwritten, **({"merged": merged} if merged else {})}


NOTHING_WRITTEN = "the restore wrote nothing"


def nothing_written_note(policy: str) -> str:
    return (
        f"{NOTHING_WRITTEN}: every object it would restore already existed and was left as "
        f"it was (existing_resource_policy={policy}; see already_existed). The target is as it was "
        "and there is nothing to roll back; to bring the backup's versions back, restore with "
        "existing_resource_policy=update"
    )


def wrote(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a restore that ended with `report` wrote (and `merged`, when it merged into
    ServiceAccounts); None when it cannot tell: no report (the restore failed, or its run died),
    or one from before the report said it."""
    if not report or "created" not in report or "overwritten" not in report:
        return None
    done = {"created": list(report["created"]), "overwritten": list(report["overwritten"])}
    return done | ({"merged": dict(report["merged"])} if report.get("merged") else {})


def merges_left(done: dict[str, Any] | None) -> list[str]:
    """What a restore merged into ServiceAccounts, which its rollback leaves: Velero merges a
    ServiceAccount that exists, whatever the policy, so putting the safety copy back only adds to
    it and never takes away what the restore added."""
    merged = (done or {}).get("merged") or {}
    return [
        f"{key}: {'; '.join(f'{part} {added[part]}' for part in sorted(added))} merged in by the restore"
        for key, added in sorted(merged.items())
    ]


def exact_rollback(
    options: dict[str, Any],
    done: dict[str, Any],
    inventory: dict[str, dict[str, list[str]]],
    safety_id: str,
) -> dict[str, Any]:
    """The rollback's restore `options` (of safety backup `safety_id`, whose `inventory` is
    given), narrowed to exactly the objects the restore overwrote (`done`: what it wrote; one
    that may have written cluster-scoped objects keeps them in its rollback). Velero restores by
    namespace and kind, so options that also reach objects the restore never wrote would put
    their copies from before the restore over writes made to them since: then by name (named.py
    copies those, and only those), or BadInput saying what to put back by hand."""
    # every kind the safety backup's inventory lists: the custom ones too (a Velero rollback of
    # the namespace puts them back as well)
    held = {kind for kinds_ in inventory.values() for kind in kinds_}
    kinds = {kube.canonical_resource(r) for r in options.get("resources") or []} or set(kube.KINDS) | held
    kinds -= {kube.canonical_resource(r) for r in options.get("exclude_resources") or []}
    names = set(options.get("names") or [])
    skip = set(options.get("exclude_namespaces") or [])

    def reach(namespaces: list[str], plurals: set[str], picked: set[str]) -> set[str]:
        return {
            f"{ns}/{plural}/{name}"
            for ns in namespaces
            if ns not in skip
            for plural, held in inventory.get(ns, {}).items()
            if plural in plurals
            for name in held
            if not picked or name in picked
        }

    merged = merges_left(done)
    if merged and not set(done["overwritten"]) - set(done["merged"]):
        raise BadInput(
            f"the restore only merged into ServiceAccounts that existed ({merged[:20]}); a rollback "
            "cannot take that away (Velero merges a ServiceAccount that exists whatever the policy, "
            "so the safety copy would only add to it). Remove by hand what was merged in "
            "(`kubectl edit serviceaccount -n <namespace> <name>`); nothing was done"
        )
    scope = reach(options.get("namespaces") or sorted(inventory), kinds, names)
    # not the merged ServiceAccounts: a rollback cannot put them back (merges_left lists them)
    wrote = scope & (set(done["overwritten"]) - set(done.get("merged") or {}))
    if scope <= wrote:
        return options
    parts = [key.split("/", 2) for key in sorted(wrote)]
    by_name = {
        "namespaces": sorted({p[0] for p in parts}),
        "resources": sorted({p[1] for p in parts}),
        "names": sorted({p[2] for p in parts}),
    }
    copied = set(kube.COPIED_KINDS) - {"persistentvolumeclaims"}  # named.py: no RBAC, no claims
    if (
        parts
        and set(by_name["resources"]) <= copied
        and not any(c.startswith(CLUSTER_SCOPED) for c in done["created"])
        and reach(by_name["namespaces"], set(by_name["resources"]), set(by_name["names"])) == wrote
    ):
        keep = {k: options[k] for k in ("timeout_seconds",) if k in options}
        return {**by_name, "existing_resource_policy": "update", **keep}
    left = sorted(scope - wrote)
    raise BadInput(
        f"a rollback restores by namespace and kind, so it would also put back {left[:20]}, which the "
        "restore did not write, over any writes made to them since; and what it overwrote cannot all be "
        f"put back by name. Put back by hand what it overwrote ({sorted(wrote)[:20]}) from safety backup "
        f"{safety_id}; nothing was done"
    )
