"""Node ports a restored copy must not ask for.

Velero's service restore action keeps the nodePorts `kubectl apply` asked for (those in the
last-applied-configuration, or in managedFields for server-side apply) and the
healthCheckNodePort so applied (pkg/restore/actions/service_action.go). A copy restored next to
its original (a drill's namespaces, a restore by name's scratch namespace) then asks for a port
the original holds: the API refuses it (422 "provided port is already allocated"), Velero counts
an item error and the restore ends PartiallyFailed. So such restores carry resource-modifier
rules that remove, from the Services of the backup's namespaces, every nodePort the cluster has
already allocated: the copy gets a new one.
"""

from __future__ import annotations

from typing import Any

from tasks.components.kubernetes.api import Kube


def allocated_node_port_rules(k: Kube, namespaces: list[str]) -> list[dict[str, Any]]:
    """Velero resource-modifier rules: for the Services of `namespaces` (as the backup has them:
    Velero matches the source namespace), remove a nodePort / healthCheckNodePort that a Service
    of the cluster holds now. One rule per (port, index): a rule's `matches` tests one path's value,
    and removing a path that is missing would fail the item."""
    services = k.call("list services", k.core.list_service_for_all_namespaces).items
    taken: set[int] = set()
    health: set[int] = set()
    width = 0
    for svc in services:
        ports = (svc.spec.ports if svc.spec else None) or []
        width = max(width, len(ports))
        taken |= {p.node_port for p in ports if p.node_port}
        if svc.spec and svc.spec.health_check_node_port:
            health.add(svc.spec.health_check_node_port)
    where = {"groupResource": "services", "namespaces": sorted(namespaces)}

    def rule(path: str, value: int) -> dict[str, Any]:
        return {
            "conditions": {**where, "matches": [{"path": path, "value": str(value)}]},
            "patches": [{"operation": "remove", "path": path}],
        }

    return [rule(f"/spec/ports/{i}/nodePort", port) for port in sorted(taken) for i in range(width)] + [
        rule("/spec/healthCheckNodePort", port) for port in sorted(health)
    ]
