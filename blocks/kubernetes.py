"""Kubernetes credentials and the Velero target: where the cluster is and how Velero is set up."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator, model_validator

from blocks.strict import StrictBlock

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class KubernetesTarget(StrictBlock):
    """How to reach a cluster. Empty = in-cluster service account when running in a pod (the
    work pool's Job), else $KUBECONFIG / ~/.kube/config (a laptop)."""

    _block_type_name = "KLB Kubernetes Target"
    _block_type_slug = "klb-kubernetes-target"
    _description = "Kubernetes credentials: in-cluster service account, a kubeconfig file, or its contents."

    kubeconfig_path: str | None = Field(default=None, description="path to a kubeconfig file")
    kubeconfig: SecretStr | None = Field(default=None, description="kubeconfig contents (YAML), kept secret")
    context: str | None = Field(default=None, description="kubeconfig context (default: current-context)")
    in_cluster: bool = Field(default=False, description="use the pod's service account, ignore kubeconfigs")
    request_timeout_seconds: float = Field(default=30, gt=0, description="per API request")

    @model_validator(mode="after")
    def _one_source(self) -> KubernetesTarget:
        given = [n for n in ("kubeconfig_path", "kubeconfig") if getattr(self, n)]
        if self.in_cluster and given:
            raise ValueError(f"in_cluster=True and {given[0]} both set: choose one way to reach the cluster")
        if len(given) > 1:
            raise ValueError("set kubeconfig_path or kubeconfig (contents), not both")
        return self


class VeleroTarget(StrictBlock):
    """A cluster with Velero, and the defaults of the backups taken through it."""

    _block_type_name = "KLB Velero Target"
    _block_type_slug = "klb-velero-target"
    _description = "Velero on a cluster: namespace, storage location, what to back up, timeouts."

    kube: KubernetesTarget = Field(default_factory=KubernetesTarget)
    namespace: str = Field(default="velero", pattern=DNS_LABEL, description="where Velero runs")
    storage_location: str = Field(default="default", description="BackupStorageLocation name")
    include_namespaces: list[str] = Field(
        default_factory=lambda: ["knative-serving", "lambda-system", "database"],
        description="the runbook's namespaces; ['*'] for all",
    )
    exclude_namespaces: list[str] = Field(default_factory=list)
    include_resources: list[str] = Field(default_factory=list, description="empty = all resources")
    exclude_resources: list[str] = Field(default_factory=list)
    label_selector: dict[str, str] = Field(default_factory=dict, description="matchLabels; empty = all")
    snapshot_volumes: bool | None = Field(
        default=None, description="Velero snapshotVolumes; None = Velero's default (snapshot when possible)"
    )
    default_volumes_to_fs_backup: bool = Field(
        default=False, description="file-system backup (Kopia) of pod volumes instead of snapshots"
    )
    ttl_hours: float | None = Field(
        default=None, gt=0, description="Velero TTL; None = the component's retention in backup-table.yaml"
    )
    backup_timeout_seconds: float = Field(default=3600, gt=0)
    restore_timeout_seconds: float = Field(default=3600, gt=0)
    poll_interval_seconds: float = Field(default=5, gt=0, description="how often to read the phase")
    cancel_stuck_backups: bool = Field(
        default=True, description="on timeout, ask Velero to delete the stuck backup (DeleteBackupRequest)"
    )

    @field_validator("include_namespaces", "exclude_namespaces")
    @classmethod
    def _namespaces(cls, names: list[str]) -> list[str]:
        # a typo'd or empty name would make Velero back up nothing (or everything) without a word
        bad = [n for n in names if n != "*" and (len(n) > 63 or not re.fullmatch(DNS_LABEL, n))]
        if bad:
            raise ValueError(
                f"{bad} are not valid namespace names (lower-case DNS labels, <= 63 chars, or '*' for all)"
            )
        return names
