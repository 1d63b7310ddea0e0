"""Node ports a restored Service may keep, and those it must give up.

Velero's service restore action keeps the nodePorts `kubectl apply` asked for (those in the
last-applied-configuration, or in managedFields for server-side apply) and the
healthCheckNodePort so applied, and drops the ones the cluster assigned
(pkg/restore/actions/service_action.go). Kept, such a port is what the Service is reached on
from outside the cluster: a restore in place of a deleted Service must bring it back on it.
But a copy whose port another Service holds now (its original, beside which a drill or a
mapped restore puts the copy; or any other Service that took the port meanwhile) is refused
by the API (422 "provided port is already allocated"), Velero counts an item error and the
restore ends PartiallyFailed. So every restore carries resource-modifier rules that remove,
from the backup's Services, exactly the ports a Service of the cluster holds now, unless the
holder is the very object the restore puts back (same destination namespace and name: Velero
skips it as existing, or updates it, and an update keeps its allocated ports).
"""

from __future__ import annotations

import json
from typing import Any

from tasks.components.kubernetes.api import Kube

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

# Rules test one port index each (a rule's `matches` compares one path's value). The backup's
# Services are not known here (our record holds their names), so the indexes covered are those
# of the widest Service in the cluster, and at least this many.
MIN_WIDTH = 8


def backed_up_services(doc: dict[str, Any], ns: str) -> list[str]:
    """The names of the Services the backup may hold in `ns`: its inventory's, and those created
    or deleted while it ran (which it may hold too)."""
    held = set((doc.get("inventory") or {}).get(ns, {}).get("services", []))
    for entry in doc.get("changed_during_backup") or []:
        ns_, plural, name = entry.split("/", 2)
        if ns_ == ns and plural == "services":
            held.add(name)
    return sorted(held)


def node_port_rules(
    k: Kube,
    doc: dict[str, Any],
    namespaces: list[str],
    mapping: dict[str, str],
    held: tuple[dict[int, tuple[str, str]], int] | None = None,
) -> list[dict[str, Any]]:
    """Velero resource-modifier rules for a restore of `namespaces` (source namespaces, as the
    backup has them: Velero matches the source namespace) mapped by `mapping`: remove each
    nodePort / healthCheckNodePort that a Service of the cluster holds now (`held`, or as
    listed) from the restored Services, but from the one that is its holder's own destination
    object. nodePorts and healthCheckNodePorts come from one allocator (the
    service-node-port-range): a port held as either collides with a copy asking for it as either."""
    taken, widest = held_ports(k) if held is None else held
    width = max(MIN_WIDTH, widest)
    paths = [f"/spec/ports/{i}/nodePort" for i in range(width)] + ["/spec/healthCheckNodePort"]
    rules: list[dict[str, Any]] = []
    for path in paths:
        for port, (holder_ns, holder_name) in sorted(taken.items()):
            # the namespaces whose copies would collide whatever their name, then those that
            # land where the holder is: there only the Services of other names collide
            anywhere = sorted(ns for ns in namespaces if mapping.get(ns, ns) != holder_ns)
            if anywhere:
                rules.append(_rule({"namespaces": anywhere}, path, port))
            for ns in sorted(set(namespaces) - set(anywhere)):
                others = [n for n in backed_up_services(doc, ns) if n != holder_name]
                if others:  # names are DNS labels: nothing in them to escape
                    regex = f"^({'|'.join(others)})$"
                    rules.append(_rule({"namespaces": [ns], "resourceNameRegex": regex}, path, port))
    return rules


def _rule(where: dict[str, Any], path: str, port: int) -> dict[str, Any]:
    return {
        "conditions": {"groupResource": "services", **where, "matches": [{"path": path, "value": str(port)}]},
        "patches": [{"operation": "remove", "path": path}],
    }


def held_ports(k: Kube) -> tuple[dict[int, tuple[str, str]], int]:
    """-> (nodePort or healthCheckNodePort -> the Service (namespace, name) that holds it now,
    the most ports a Service of the cluster has)."""
    taken: dict[int, tuple[str, str]] = {}
    widest = 0
    for svc in k.call("list services", k.core.list_service_for_all_namespaces).items:
        holder = (svc.metadata.namespace, svc.metadata.name)
        listed = (svc.spec.ports if svc.spec else None) or []
        widest = max(widest, len(listed))
        taken.update({p.node_port: holder for p in listed if p.node_port})
        if svc.spec and svc.spec.health_check_node_port:
            taken[svc.spec.health_check_node_port] = holder
    return taken, widest


def keep_applied_ports(svc: dict[str, Any], taken: dict[int, tuple[str, str]], dest: tuple[str, str]) -> None:
    """A copy Velero restored aside (`svc`, the raw object, managedFields still on it) without the
    nodePorts it got there: those Velero dropped, or our rules removed because `taken` held them,
    were allocated anew for the scratch copy. Kept: the ports Velero keeps (service_action.go:
    a last-applied-configuration names the port with a nodePort, a named port by name, an
    unnamed one by value; without one, a managedFields entry owns its `f:nodePort`; the same for
    healthCheckNodePort) that no Service held, i.e. the backup's. managedFields hold no values:
    a port they fix is kept unless the copy's destination `dest` (namespace, name) holds ports
    (then an update keeps them, and a copy that is skipped asks for nothing)."""
    meta = svc.get("metadata") or {}
    notes = meta.get("annotations") or {}
    try:
        last = json.loads(notes[LAST_APPLIED]) if LAST_APPLIED in notes else None
    except ValueError:
        last = None
    asked = (last or {}).get("spec") or {} if isinstance(last, dict) else {}
    owned = [((entry.get("fieldsV1") or {}).get("f:spec") or {}) for entry in meta.get("managedFields") or []]
    dest_holds = dest in taken.values()
    fixed = [p for p in asked.get("ports") or [] if isinstance(p, dict) and p.get("nodePort")]
    named = {p["name"]: p["nodePort"] for p in fixed if p.get("name")}
    unnamed = {p["nodePort"] for p in fixed if not p.get("name")}
    keys = {
        k
        for f in owned
        for k, e in (f.get("f:ports") or {}).items()
        if isinstance(e, dict) and "f:nodePort" in e
    }
    spec = svc.get("spec") or {}
    for port in spec.get("ports") or []:
        if last is not None:
            name, node_port = port.get("name"), port.get("nodePort")
            applied = named.get(name) if name else (node_port if node_port in unnamed else None)
            keep = bool(applied) and applied not in taken
        else:
            key = f'k:{{"port":{port.get("port")},"protocol":"{port.get("protocol") or "TCP"}"}}'
            keep = key in keys and not dest_holds
        if not keep:
            port.pop("nodePort", None)
    health = asked.get("healthCheckNodePort")
    by_fields = any("f:healthCheckNodePort" in f for f in owned) and not dest_holds
    if not (health and health not in taken) and not by_fields:
        spec.pop("healthCheckNodePort", None)
