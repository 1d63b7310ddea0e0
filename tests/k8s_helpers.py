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


# Knative Serving's Service CRD, cut down to what a backup must bring back (its schema is
# open under spec, as Knative's own CRD is: x-kubernetes-preserve-unknown-fields)
KNATIVE_SERVICE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "services.serving.knative.dev", "labels": {"knative.dev/crd-install": "true"}},
    "spec": {
        "group": "serving.knative.dev",
        "names": {
            "kind": "Service",
            "plural": "services",
            "singular": "service",
            "shortNames": ["kservice", "ksvc"],
            "categories": ["all", "knative", "serving"],
        },
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


def install_knative_crd(ctl) -> None:
    """Knative Serving's Service CRD, as `kubectl apply -f serving-crds.yaml` installs it."""
    ctl.seed("apiextensions.k8s.io/v1", "customresourcedefinitions", "", KNATIVE_SERVICE_CRD)


def seed_knative_service(ctl, ns: str, name: str = "hello", image: str = "ghcr.io/klb/hello:v1") -> dict:
    """A Knative Service (the platform's workload) in `ns`; its CRD must be installed."""
    return ctl.seed(
        "serving.knative.dev/v1",
        "services",
        ns,
        {
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"template": {"spec": {"containers": [{"image": image}]}}},
        },
    )
