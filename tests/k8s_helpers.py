"""Seeding the Kubernetes API emulator (and its fake Velero) for the tests: one way, used by all."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from tasks.components.kubernetes import api as kube


def seed_app(ctl, ns: str, replicas: tuple[int, ...] = (2, 5, 1)) -> None:
    """A namespace like the product's: deployments, config maps, a secret, a service, a volume."""
    ctl.seed_namespace(ns, {"team": "lambda"})
    ctl.seed_pvc(ns, "data", content=f"{ns} volume v1")
    for name, count in zip(("api", "worker", "cron"), replicas, strict=False):
        # the api's pods mount the volume: file-system backup reads it through them
        ctl.seed_deployment(ns, name, count, pvcs=("data",) if name == "api" else ())
    ctl.seed("v1", "configmaps", ns, {"metadata": {"name": "settings"}, "data": {"mode": "prod"}})
    ctl.seed("v1", "configmaps", ns, {"metadata": {"name": "flags"}, "data": {"beta": "off"}})
    ctl.seed("v1", "secrets", ns, {"metadata": {"name": "db-password"}, "data": {"pw": "czNjcjN0"}})
    ctl.seed(
        "v1",
        "services",
        ns,
        {"metadata": {"name": "api"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}},
    )


def seed_settings(ctl, ns: str) -> None:
    """A namespace with one config map: the least a Velero backup can hold."""
    ctl.seed_namespace(ns, {"team": "lambda"})
    ctl.seed("v1", "configmaps", ns, {"metadata": {"name": "settings"}, "data": {"m": "1"}})


def seed_namespaces(ctl, *prefixes: str, seed: Callable[..., None] = seed_app) -> tuple[str, ...]:
    """One new namespace per prefix (`<prefix>-<token>`, one token for all), each seeded."""
    token = secrets.token_hex(3)
    names = tuple(f"{prefix}-{token}" for prefix in prefixes)
    for ns in names:
        seed(ctl, ns)
    return names


def k8s(kube_api):
    return kube.connect(kube_api.target())


def configmap(kube_api, ns: str, name: str) -> dict:
    return k8s(kube_api).core.read_namespaced_config_map(name, ns).data


def set_configmap(kube_api, ns: str, name: str, data: dict) -> None:
    k8s(kube_api).core.patch_namespaced_config_map(name, ns, {"data": data})
