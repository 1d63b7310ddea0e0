"""The labels of the objects a backup holds, recorded with its inventory, so that a restore with a
`label_selector` knows which of them it must bring back: Velero restores only the objects whose
labels match, and the inventory alone (names) cannot tell those from the ones it leaves out. Without
them a restore by label verified nothing, and said `restored` when Velero had skipped an object
(a custom resource whose CRD the cluster lacks, say)."""

from __future__ import annotations

from typing import Any

from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes import custom
from tasks.components.kubernetes.api import METADATA_ONLY, Kube, listed_items

Held = dict[str, dict[str, list[str]]]  # namespace -> kind -> names (an inventory)


def held_labels(k: Kube, held: Held) -> dict[str, dict[str, dict[str, dict[str, str]]]]:
    """namespace -> kind -> name -> labels, for the labelled objects of the inventory `held`
    (listed as metadata only: no Secret data)."""
    served = (
        custom.served_kinds(k) if any(custom.is_custom(p) for kinds in held.values() for p in kinds) else {}
    )
    out: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
    for ns, kinds in held.items():
        for plural, names in kinds.items():
            wanted = set(names)
            labelled = {
                i["metadata"]["name"]: i["metadata"]["labels"]
                for i in (_items(k, ns, plural, served) if wanted else [])
                if i["metadata"]["name"] in wanted and i["metadata"].get("labels")
            }
            if labelled:
                out.setdefault(ns, {})[plural] = labelled
    return out


def _items(k: Kube, ns: str, plural: str, served: dict[str, custom.CustomKind]) -> list[dict[str, Any]]:
    what = f"list {plural} in {ns}"
    if custom.is_custom(plural):
        found = served.get(plural)
        if found is None:  # its CRD gone meanwhile: none
            return []
        fn = k.custom.list_namespaced_custom_object
        resp = k.call(
            what,
            fn,
            found.group,
            found.version,
            ns,
            found.plural,
            _headers=METADATA_ONLY,
            _preload_content=False,
        )
    else:
        fn = kube.kind_api(k, plural, "list")
        resp = k.call(what, fn, ns, _headers=METADATA_ONLY, _preload_content=False)
    return listed_items(resp.data, what)


def selected(doc: dict[str, Any], scope: Held, selector: dict[str, str]) -> Held | None:
    """The objects of `scope` whose backed-up labels match `selector` (matchLabels), or None for a
    backup recorded before its labels were (nothing to tell them by)."""
    if "labels" not in doc:
        return None
    labels = doc["labels"]
    return {
        ns: {
            plural: [
                n
                for n in names
                if selector.items() <= (labels.get(ns, {}).get(plural, {}).get(n) or {}).items()
            ]
            for plural, names in kinds.items()
        }
        for ns, kinds in scope.items()
    }
