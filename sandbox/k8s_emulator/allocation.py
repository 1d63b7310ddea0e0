"""Service allocation: what the API server assigns to a Service on create."""

from __future__ import annotations

from typing import Any

from sandbox.k8s_emulator.errors import ApiError


class ServiceAllocator:
    """ClusterIPs and nodePorts are allocated by the server and unique
    (pkg/registry/core/service/ipallocator, portallocator): asking for one already in use is
    422 "provided IP/port is already allocated"."""

    def __init__(self) -> None:
        self.ips: set[str] = set()
        self.ports: set[int] = set()
        self._next_ip, self._next_port = 10, 30000

    def allocate(self, svc: dict[str, Any]) -> None:
        spec = svc.setdefault("spec", {})
        name = svc["metadata"]["name"]
        causes = []
        ip = spec.get("clusterIP")
        if ip and ip != "None" and ip in self.ips:
            causes.append(
                f'spec.clusterIPs: Invalid value: ["{ip}"]: failed to allocate IP {ip}: '
                "provided IP is already allocated"
            )
        wants_ports = spec.get("type") in ("NodePort", "LoadBalancer")
        for i, port in enumerate(spec.get("ports") or []):
            if port.get("nodePort") and (port["nodePort"] in self.ports or not wants_ports):
                why = (
                    "provided port is already allocated"
                    if wants_ports
                    else "may not be used when `type` is 'ClusterIP'"
                )
                causes.append(f"spec.ports[{i}].nodePort: Invalid value: {port['nodePort']}: {why}")
        if causes:
            raise ApiError(
                422,
                "Invalid",
                f'Service "{name}" is invalid: ' + ", ".join(causes),
                {"name": name, "kind": "Service"},
            )
        if ip != "None":
            if not ip:
                ip = f"10.96.{self._next_ip // 250}.{self._next_ip % 250 + 1}"
                self._next_ip += 1
            self.ips.add(ip)
            spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
        spec.setdefault("type", "ClusterIP")
        for port in spec.get("ports") or [] if wants_ports else []:
            if not port.get("nodePort"):
                while self._next_port in self.ports:
                    self._next_port += 1
                port["nodePort"] = self._next_port
            self.ports.add(port["nodePort"])

    def release(self, svc: dict[str, Any]) -> None:
        spec = svc.get("spec") or {}
        self.ips.discard(spec.get("clusterIP"))
        for port in spec.get("ports") or []:
            self.ports.discard(port.get("nodePort"))
