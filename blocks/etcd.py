"""Where etcd is, how to reach it, and how its control plane is laid out (for the swap plan)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from blocks.strict import StrictBlock, without_credentials


class SwapMode(StrEnum):
    static_pod = "static-pod"  # kubeadm: etcd and kube-apiserver are kubelet static pods
    systemd = "systemd"  # etcd and kube-apiserver are systemd units (the runbook's layout)


class EtcdTarget(StrictBlock):
    _block_type_name = "KLB etcd Target"
    _block_type_slug = "klb-etcd-target"
    _description = "An etcd cluster (a self-managed control plane): endpoints, TLS, binaries, swap layout."

    endpoints: list[str] = Field(
        default_factory=lambda: ["https://127.0.0.1:2379"],
        min_length=1,
        description="client URLs; the snapshot is taken from the first healthy one",
    )
    cacert_path: str | None = Field(default=None, description="e.g. /etc/kubernetes/pki/etcd/ca.crt")
    cert_path: str | None = Field(default=None, description="e.g. /etc/kubernetes/pki/etcd/server.crt")
    key_path: str | None = Field(default=None, description="e.g. /etc/kubernetes/pki/etcd/server.key")
    cacert: SecretStr | None = Field(default=None, description="CA certificate PEM (instead of a path)")
    cert: SecretStr | None = Field(default=None, description="client certificate PEM (instead of a path)")
    key: SecretStr | None = Field(default=None, description="client key PEM (instead of a path)")
    username: str | None = Field(
        default=None,
        pattern=r"^[^:\s]+$",
        description="etcd auth user, if auth is enabled (checks of a backup need it too: the "
        "snapshot keeps the cluster's users)",
    )
    password: SecretStr | None = None
    etcdctl: str = Field(default="etcdctl", description="etcdctl binary")
    etcdutl: str | None = Field(
        default=None,
        description="etcdutl binary (etcd 3.5+); empty: used when found on PATH, else etcdctl (3.4)",
    )
    etcd: str = Field(default="etcd", description="etcd server binary, for the throwaway verify member")
    work_dir: str | None = Field(
        default=None,
        description="where the transient snapshot file lives while it is uploaded (default $TMPDIR); "
        "needs room for one snapshot (at most etcd's quota, 2 GiB by default)",
    )
    dial_timeout_seconds: int = Field(default=5, ge=1, le=120)
    command_timeout_seconds: int = Field(default=1800, ge=10, description="limit for one snapshot save")
    # The real control plane, used only to write (and, when approved, execute) the swap plan.
    swap_mode: SwapMode = SwapMode.static_pod
    data_dir: str = Field(default="/var/lib/etcd", description="the live member's data directory")
    manifests_dir: str = Field(default="/etc/kubernetes/manifests", description="static pod manifests")
    member_name: str | None = Field(default=None, description="--name of the member (default: hostname)")
    peer_url: str | None = Field(
        default=None, description="its --initial-advertise-peer-urls, e.g. https://10.0.0.1:2380"
    )
    initial_cluster: str | None = Field(
        default=None,
        description="--initial-cluster of the restored cluster (default: this member alone); every "
        "member must be restored from the same snapshot",
    )
    swap_wait_seconds: int = Field(
        default=300,
        ge=5,
        le=3600,
        description="during an approved swap, how long etcd may take to stop or to become healthy "
        "before the swap is rolled back",
    )
    etcd_unit: str = Field(default="etcd", description="systemd unit (swap_mode systemd)")
    apiserver_unit: str = Field(default="kube-apiserver", description="systemd unit (swap_mode systemd)")

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, endpoints: list[str]) -> list[str]:
        for url in endpoints:
            without_credentials(url)  # before any message that would quote it
            if not url.startswith(("http://", "https://")) or "," in url or " " in url:
                raise ValueError(f"endpoint {url!r} must be one http(s):// URL")
        return endpoints

    @field_validator("peer_url")
    @classmethod
    def _peer(cls, value: str | None) -> str | None:
        return value if value is None else without_credentials(value)

    @model_validator(mode="after")
    def _one_source_each(self) -> EtcdTarget:
        for name in ("cacert", "cert", "key"):
            if getattr(self, name) is not None and getattr(self, f"{name}_path"):
                raise ValueError(f"give {name} or {name}_path, not both")
        if (self.password is None) != (self.username is None):
            raise ValueError("etcd auth needs both username and password")
        return self

    @contextmanager
    def client_env(self) -> Iterator[dict[str, str]]:
        """etcdctl's settings as environment: paths only (PEM contents become 0600 files in a
        0700 directory that is removed on exit), never a secret."""
        env = {"ETCDCTL_API": "3", "ETCDCTL_DIAL_TIMEOUT": f"{self.dial_timeout_seconds}s"}
        with tempfile.TemporaryDirectory(prefix="klb-etcd-tls-") as tmp:
            os.chmod(tmp, 0o700)
            for name, var in (("cacert", "ETCDCTL_CACERT"), ("cert", "ETCDCTL_CERT"), ("key", "ETCDCTL_KEY")):
                content: SecretStr | None = getattr(self, name)
                path: str | None = getattr(self, f"{name}_path")
                if content is not None:
                    file = Path(tmp) / f"{name}.pem"
                    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as fh:
                        fh.write(content.get_secret_value())
                    path = str(file)
                if path:
                    env[var] = path
            yield env  # etcd auth is not here: the password goes on etcdctl's stdin (tools.ctl)
