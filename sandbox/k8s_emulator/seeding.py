"""Putting a cluster's starting state into the emulator (tests and the demo), then waiting for
its controllers to settle it (pods running, claims bound)."""

from __future__ import annotations

import time
from typing import Any

from sandbox.k8s_emulator import crds
from sandbox.k8s_emulator.snapshot import NAMESPACES, PODS, PVCS, PVS
from sandbox.k8s_emulator.store import BY_PATH, Resource


class Seeding:
    """Mixed into VeleroController (needs .store, .namespace, .tick, .volumes)."""

    def install(self) -> None:
        """Velero in `namespace` with an Available BackupStorageLocation `default`; two storage
        classes, `standard` (Immediate) and `local-wffc` (WaitForFirstConsumer)."""
        self.seed_discovery_role()
        self.seed_namespace(self.namespace)
        self.seed(
            "velero.io/v1",
            "backupstoragelocations",
            self.namespace,
            {
                "metadata": {"name": "default"},
                "spec": {"provider": "aws", "objectStorage": {"bucket": "velero"}, "default": True},
                "status": {"phase": "Available"},
            },
        )
        for name, mode in (("standard", "Immediate"), ("local-wffc", "WaitForFirstConsumer")):
            self.seed(
                "storage.k8s.io/v1",
                "storageclasses",
                "",
                {
                    "metadata": {"name": name},
                    "provisioner": "hostpath.csi.k8s.io",
                    "reclaimPolicy": "Delete",
                    "volumeBindingMode": mode,
                },
            )

    def seed_discovery_role(self) -> None:
        """The bootstrap ClusterRole system:discovery and its binding to every authenticated user
        (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go): API discovery is allowed to
        anyone the cluster knows, whatever the Roles an account is given."""
        rbac = "rbac.authorization.k8s.io/v1"
        meta = {
            "name": "system:discovery",
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        }
        urls = ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*"]
        urls += ["/readyz", "/version", "/version/"]
        self.seed(
            rbac,
            "clusterroles",
            "",
            {"metadata": meta, "rules": [{"nonResourceURLs": urls, "verbs": ["get"]}]},
        )
        subject = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:discovery"}
        binding = {"metadata": meta, "roleRef": ref, "subjects": [subject]}
        self.seed(rbac, "clusterrolebindings", "", binding)

    def seed_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.store.create(NAMESPACES, "", {"metadata": {"name": name, "labels": labels or {}}})

    def seed_deployment(
        self,
        namespace: str,
        name: str,
        replicas: int,
        labels: dict | None = None,
        pvcs: tuple[str, ...] = (),
        security_context: dict | None = None,
    ) -> dict:
        """A deployment (its pods follow on the next ticks), mounting `pvcs`; `security_context`
        for its container (what a namespace's Pod Security level may require)."""
        labels = {"app": name, **(labels or {})}
        container: dict[str, Any] = {"name": name, "image": f"registry.local/{name}:1"}
        if security_context:
            container["securityContext"] = security_context
        pod_spec: dict[str, Any] = {"containers": [container]}
        if pvcs:
            pod_spec["volumes"] = [{"name": c, "persistentVolumeClaim": {"claimName": c}} for c in pvcs]
        dep = self.seed(
            "apps/v1",
            "deployments",
            namespace,
            {
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
                },
            },
        )
        self.settle(lambda: len(self._running(namespace, name)) == replicas)
        return dep

    def seed_pvc(
        self,
        namespace: str,
        name: str,
        content: str | None = None,
        labels: dict | None = None,
        storage_class: str = "standard",
    ) -> dict:
        """A PVC bound to a pre-provisioned (non-CSI) PV; `content` is what its volume holds."""
        pv = f"pv-{namespace}-{name}"
        self.store.create(
            PVS,
            "",
            {
                "metadata": {"name": pv},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": storage_class,
                    "hostPath": {"path": f"/data/{pv}"},
                },
            },
        )
        pvc = self.seed(
            "v1",
            "persistentvolumeclaims",
            namespace,
            {
                "metadata": {"name": name, "labels": labels or {}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": storage_class,
                    "volumeName": pv,
                },
            },
        )
        self.settle(lambda: self._phase(PVCS, namespace, name) == "Bound")
        if content is not None:
            self.volumes[(namespace, name)] = content
        return pvc

    def seed(self, group_version: str, plural: str, namespace: str, obj: dict[str, Any]) -> dict:
        res = BY_PATH.get((group_version, plural)) or crds.by_path(self.store)[(group_version, plural)]
        return self.store.create(res, namespace, obj)

    def settle(self, done, timeout: float = 10) -> None:
        """Wait until the controllers have brought `done()` about (seeding only)."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError("the emulated cluster did not settle")
            time.sleep(self.tick)

    def _phase(self, res: Resource, ns: str, name: str) -> str | None:
        return ((self.store.find(res, ns, name) or {}).get("status") or {}).get("phase")

    def _running(self, ns: str, app: str) -> list[dict]:
        return [
            p
            for p in self.store.list(PODS, ns, {"matchLabels": {"app": app}})
            if (p.get("status") or {}).get("phase") == "Running"
        ]
