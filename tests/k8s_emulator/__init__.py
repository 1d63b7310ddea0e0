"""A Kubernetes API emulator with a fake Velero, for tests (see server.py and velero.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.k8s_emulator.server import KubeApiServer
from tests.k8s_emulator.velero import VeleroController


def write_kubeconfig(path: Path, url: str, context: str = "emulator") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": url}}],
        "users": [{"name": "klb", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": "klb"}}],
        "current-context": context,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


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
    """Start the emulator on a free loopback port with Velero installed (namespace `velero`,
    an Available BackupStorageLocation `default`) and write a kubeconfig for it."""
    server = KubeApiServer().start()
    ctl = server.controller
    ctl.seed_namespace("velero")
    ctl.seed(
        "velero.io/v1",
        "backupstoragelocations",
        "velero",
        {
            "metadata": {"name": "default"},
            "spec": {"provider": "aws", "objectStorage": {"bucket": "velero"}, "default": True},
            "status": {"phase": "Available"},
        },
    )
    return KubeAPI(server, write_kubeconfig(workdir / "kubeconfig", server.url))


__all__ = ["KubeAPI", "KubeApiServer", "VeleroController", "start_kube_api", "write_kubeconfig"]
