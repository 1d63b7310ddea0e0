"""The resources the emulated API server knows: the built-in ones (a fixed list) and, built from
the CustomResourceDefinitions in the store (crds.py), the custom ones.

A custom resource is a `Resource` with `custom=True`: the server's built-in behaviour (a core
Service's clusterIP, a Pod's admission, a Deployment's template, ...) keys on `builtin`, which is
empty for it, so Knative's `services.serving.knative.dev` is never taken for a core Service.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NO_STATUS_SUBRESOURCE = frozenset({"backups", "restores", "deletebackuprequests"})


@dataclass(frozen=True)
class Resource:
    group_version: str  # "v1", "apps/v1", "velero.io/v1"
    plural: str
    kind: str
    namespaced: bool = True
    # a CRD's resource; these fields do not take part in equality (the store's key is
    # (group/version, plural, kind, scope)), so a CRD's later edit of its short names keeps its objects
    custom: bool = field(default=False, compare=False)
    status_declared: bool = field(default=False, compare=False)  # the CRD's subresources.status
    short_names: tuple[str, ...] = field(default=(), compare=False)

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]

    @property
    def builtin(self) -> str:
        """The plural the server's built-in behaviour keys on; "" for a custom resource."""
        return "" if self.custom else self.plural

    @property
    def status_subresource(self) -> bool:
        """Velero's Backup, Restore and DeleteBackupRequest CRDs declare no `subresources`
        (config/crd/v1/bases/velero.io_backups.yaml): status is written through the object
        itself (`kubectl edit backup` changes status.expiration, honoured by Velero's GC) and
        /status is not found. Built-in kinds have one: the object's writes keep its status.
        A custom resource has one when its CRD declares it."""
        if self.custom:
            return self.status_declared
        return self.plural not in NO_STATUS_SUBRESOURCE

    @property
    def group_resource(self) -> str:
        """Velero's spelling: 'deployments.apps', 'configmaps' (core has no group)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


CRDS_GV = "apiextensions.k8s.io/v1"
RESOURCES = [
    Resource("v1", "namespaces", "Namespace", namespaced=False),
    Resource("v1", "persistentvolumes", "PersistentVolume", namespaced=False),
    Resource("v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    Resource("v1", "configmaps", "ConfigMap"),
    Resource("v1", "secrets", "Secret"),
    Resource("v1", "services", "Service"),
    Resource("v1", "pods", "Pod"),
    Resource("apps/v1", "deployments", "Deployment"),
    Resource("velero.io/v1", "backups", "Backup"),
    Resource("velero.io/v1", "restores", "Restore"),
    Resource("velero.io/v1", "deletebackuprequests", "DeleteBackupRequest"),
    Resource("velero.io/v1", "backupstoragelocations", "BackupStorageLocation"),
    Resource("velero.io/v1", "podvolumebackups", "PodVolumeBackup"),
    Resource("velero.io/v1", "podvolumerestores", "PodVolumeRestore"),
    Resource("storage.k8s.io/v1", "storageclasses", "StorageClass", namespaced=False),
    # identities and RBAC (sandbox/k8s_emulator/rbac.py enforces them)
    Resource("v1", "serviceaccounts", "ServiceAccount"),
    Resource("rbac.authorization.k8s.io/v1", "roles", "Role"),
    Resource("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
    Resource("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", namespaced=False),
    Resource("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    # custom resources are served from these (crds.py)
    Resource(CRDS_GV, "customresourcedefinitions", "CustomResourceDefinition", namespaced=False),
]
BY_PATH = {(r.group_version, r.plural): r for r in RESOURCES}
CRDS = BY_PATH[(CRDS_GV, "customresourcedefinitions")]
# What a Velero backup captures from a namespace of the built-in kinds (the emulator's "all
# resources"; the custom ones are added from the CRDs at backup time).
WORKLOAD = [r for r in RESOURCES if r.namespaced and r.group != "velero.io"]
