"""A Kubernetes API emulator with a fake Velero, for tests (see server.py and velero.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from sandbox.k8s_emulator.rbac import ADMIN_TOKEN
from sandbox.k8s_emulator.server import KubeApiServer
from sandbox.k8s_emulator.velero import VeleroController


def write_kubeconfig(path: Path, url: str, context: str = "emulator", token: str = ADMIN_TOKEN) -> Path:
    """A kubeconfig for the emulator; the default token is a cluster admin's (see rbac.py)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": url}}],
        "users": [{"name": "klb", "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": "klb"}}],
        "current-context": context,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


# what the server sets on an object at each write, not part of what a client asked for
SERVER_SET = frozenset(
    {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink"}
)


@dataclass
class KubeAPI:
    """What the `kube_api` fixture hands out."""

    server: KubeApiServer
    kubeconfig_path: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def controller(self) -> VeleroController:
        return self.server.controller

    def reset(self) -> None:
        """Between tests: a freshly installed cluster (no objects, volumes, Velero backups, request
        logs or failure switches left by the one before)."""
        self.controller.wipe()

    def state(self, *namespaces: str) -> dict:
        """The workload objects (not Velero's) of `namespaces` (default: all but velero), for
        'the cluster is as it was' assertions; plus the volumes' content. Each object whole but
        for its status and what the server sets on every write (uid, resourceVersion,
        managedFields, ...): a Role's rules, a ConfigMap's binaryData, finalizers and the rest
        of a kind's own fields count. Keyed by group resource, so a Knative Service is never
        taken for the core Service of its name."""
        store = self.server.store
        with store.lock:
            objects = {
                (res.group_resource, ns, name): json.dumps(
                    {k: v for k, v in obj.items() if k not in ("status", "metadata")}
                    | {"metadata": {k: v for k, v in obj["metadata"].items() if k not in SERVER_SET}},
                    sort_keys=True,
                )
                for (res, ns, name), obj in store.objects.items()
                if res.group != "velero.io"
                and (ns if res.namespaced else name) != "velero"
                and (not namespaces or (ns if res.namespaced else name) in namespaces)
            }
        volumes = {k: v for k, v in self.controller.volumes.items() if not namespaces or k[0] in namespaces}
        return {"objects": objects, "volumes": volumes}

    def apply(self, docs: list[dict]) -> None:
        """Create manifests' objects as a cluster admin would (`kubectl apply` of new objects)."""
        from sandbox.k8s_emulator import crds
        from sandbox.k8s_emulator.store import RESOURCES

        for doc in docs:  # a CRD earlier in `docs` serves the custom resources after it
            known = RESOURCES + crds.served(self.server.store)
            res = {(r.group_version, r.kind): r for r in known}.get((doc["apiVersion"], doc["kind"]))
            if res is None:
                raise ValueError(f"the emulator does not serve {doc['apiVersion']} {doc['kind']}")
            self.server.store.create(res, doc["metadata"].get("namespace", "") if res.namespaced else "", doc)

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig that authenticates as ServiceAccount `namespace/name` (RBAC applies)."""
        token = self.server.auth.service_account_token(namespace, name)
        return write_kubeconfig(path, self.url, token=token)

    def target(self, **kwargs):
        from blocks.kubernetes import KubernetesTarget

        return KubernetesTarget(kubeconfig_path=str(self.kubeconfig_path), **kwargs)

    def velero_target(self, **kwargs):
        from blocks.kubernetes import VeleroTarget

        kwargs.setdefault("poll_interval_seconds", 0.02)
        kwargs.setdefault("backup_timeout_seconds", 10)
        kwargs.setdefault("restore_timeout_seconds", 10)
        return VeleroTarget(kube=self.target(), **kwargs)


def start_kube_api(workdir: Path) -> KubeAPI:
    """Start the emulator on a free loopback port with Velero installed (VeleroController.install)
    and write a kubeconfig for it."""
    server = KubeApiServer().start()
    # namespaces terminate for a moment, as on a real cluster: the project must wait for it
    server.store.namespace_termination_seconds = 0.2
    server.controller.install()
    return KubeAPI(server, write_kubeconfig(workdir / "kubeconfig", server.url))


__all__ = ["KubeAPI", "KubeApiServer", "VeleroController", "start_kube_api", "write_kubeconfig"]
