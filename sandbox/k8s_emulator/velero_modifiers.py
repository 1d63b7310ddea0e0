"""The fake Velero's resource modifiers (internal/resourcemodifiers/resource_modifiers.go):
rules from a ConfigMap, applied to each item after the restore item actions, before the
restore labels and the item's move into its mapped namespace.

- Conditions are matched against the item as it was before any rule changed it (`origin`), in
  its *source* namespace: `namespaces` names the backup's namespaces, not the mapped ones.
- `groupResource` is a glob over 'plural.group' with '.' as separator ('deployments' does not
  match deployments.apps); `resourceNameRegex`, `labelSelector`; `matches` are JSON-patch tests
  (a value that differs or a path that is missing: the rule does not apply).
- `patches` (RFC 6902, as strict as evanphx/json-patch: removing a missing path fails) or
  `mergePatches` (RFC 7386). A rule whose patch fails is an item error (errs.Add); the item is
  still restored, without that rule's change. strategicPatches are not emulated (refused).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from sandbox.k8s_emulator.errors import ApiError
from sandbox.k8s_emulator.patches import json_patch, merge_patch
from sandbox.k8s_emulator.snapshot import CONFIGMAPS
from sandbox.k8s_emulator.store import Resource, match_labels


def resource_modifiers(ctl, ref: dict[str, Any] | None):
    """-> apply(res, source namespace, item) -> (item, item errors)."""
    rules = []
    if ref:
        cm = ctl.store.get(CONFIGMAPS, ctl.namespace, ref["name"])
        doc = yaml.safe_load(next(iter(cm["data"].values())))
        rules = doc.get("resourceModifierRules") or []
    for rule in rules:
        if rule.get("strategicPatches"):
            raise ValueError("the emulated Velero does not apply strategicPatches")

    def apply(res: Resource, src_ns: str, obj: dict[str, Any]) -> tuple[dict[str, Any], int]:
        origin, errors = obj, 0
        for rule in rules:
            if not _matches(rule.get("conditions") or {}, res, src_ns, origin):
                continue
            try:
                obj = _patch(rule, obj)
            except ApiError:
                errors += 1  # "error in applying patch": the item goes on without this rule
        return obj, errors

    return apply


def _matches(cond: dict[str, Any], res: Resource, ns: str, obj: dict[str, Any]) -> bool:
    if res.namespaced and cond.get("namespaces") and ns not in cond["namespaces"]:
        return False
    if not re.fullmatch(_glob(cond.get("groupResource", "")), res.group_resource):
        return False
    if cond.get("resourceNameRegex") and not re.search(cond["resourceNameRegex"], obj["metadata"]["name"]):
        return False
    if cond.get("labelSelector") and not match_labels(
        obj["metadata"].get("labels") or {}, cond["labelSelector"]
    ):
        return False
    tests = [
        {"op": "test", "path": m["path"], "value": velero_value(m.get("value", ""))}
        for m in cond.get("matches") or []
    ]
    try:
        json_patch(obj, tests)
    except ApiError:
        return False
    return True


def _glob(pattern: str) -> str:
    """gobwas/glob with '.' as the separator."""
    out = ""
    for token in re.split(r"(\*\*|\*|\?)", pattern):
        out += {"**": ".*", "*": "[^.]*", "?": "[^.]"}.get(token, re.escape(token))
    return out


def _patch(rule: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    if rule.get("patches"):
        ops = [
            {"op": p["operation"], "path": p["path"], "value": velero_value(p.get("value", ""))}
            for p in rule["patches"]
        ]
        return json_patch(obj, ops)
    for patch in rule.get("mergePatches") or []:
        obj = merge_patch(obj, yaml.safe_load(patch["patchData"]))
    return obj


def velero_value(value: str) -> Any:
    """Velero's JSONPatch.ToString: numbers, booleans, null, objects and arrays go in unquoted."""
    if value in ("null", "true", "false") or value[:1] in ("{", "["):
        return json.loads(value)
    try:
        return json.loads(value) if value and float(value) is not None else value
    except ValueError:
        return value
