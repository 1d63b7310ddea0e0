"""The cluster's own controllers, one pass per tick, as kube-controller-manager and the kubelet
run them (asynchronously: a client must wait for them, as on a real cluster).

- Deployments own pods matching their selector and keep `spec.replicas` of them; orphans that
  match are adopted (pkg/controller/replicaset: ClaimPods adopts matching orphans); status
  counts the pods.
- The kubelet starts a pod once every PVC it mounts is Bound, and removes a deleted pod (marked
  with deletionTimestamp) once its containers have stopped, on a later pass; meanwhile the pod
  still runs, and is no longer counted in its deployment's status.replicas ("non-terminated
  pods", apps/v1 DeploymentStatus). `hold_termination` keeps deleted pods terminating, as a
  long terminationGracePeriodSeconds would.
- The PV binder (pkg/controller/volume/persistentvolume): a Pending claim with `volumeName`
  binds to that PV; otherwise its StorageClass decides, `Immediate` provisions a PV now,
  `WaitForFirstConsumer` only once a pod mounts the claim
  (kubernetes.io/docs/concepts/storage/storage-classes/#volume-binding-mode).
- The garbage collector (pkg/controller/garbagecollector; background propagation): an object
  whose ownerReferences all name objects that are gone (by uid) is deleted, e.g. the pods of a
  deleted deployment.
- PVC protection (pkg/controller/volume/pvcprotection): the kubernetes.io/pvc-protection
  finalizer is removed only when no pod uses the claim; a removed claim's PV goes with it when
  its reclaimPolicy is Delete, and with it the volume's data; with Retain the PV stays, Released.
- Every new namespace gets what the serviceaccount controller and the root-ca-cert-publisher
  (pkg/controller/serviceaccount, pkg/controller/certificates/rootcacertpublisher) put in it: the
  ServiceAccount `default` and the ConfigMap `kube-root-ca.crt` (`ca.crt`: the cluster's CA).
  Made by the system (no caller's RBAC applies), at once: before anything a client or Velero
  creates in the namespace, the case a restore into a fresh namespace must cope with.
"""

from __future__ import annotations

import uuid
from contextlib import suppress
from typing import Any

from sandbox.k8s_emulator.errors import ApiError
from sandbox.k8s_emulator.store import BY_PATH, ObjectStore, Resource

DEPLOYMENTS, PODS = BY_PATH[("apps/v1", "deployments")], BY_PATH[("v1", "pods")]
PVCS, PVS = BY_PATH[("v1", "persistentvolumeclaims")], BY_PATH[("v1", "persistentvolumes")]
CLASSES = BY_PATH[("storage.k8s.io/v1", "storageclasses")]
PROTECTION = "kubernetes.io/pvc-protection"
NAMESPACES, ACCOUNTS = BY_PATH[("v1", "namespaces")], BY_PATH[("v1", "serviceaccounts")]
CONFIGMAPS = BY_PATH[("v1", "configmaps")]
ROOT_CA = "kube-root-ca.crt"
# a fixed, fake cluster CA (not a usable certificate): the same in every namespace, as on a cluster
FAKE_CA_PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBdzCCAR2gAwIBAgIBADAKBggqhkjOPQQDAjAjMSEwHwYDVQQDDBhrM3MtZW11bGF0\n"
    "b3Itc2VydmVyLWNhMB4XDTI2MDEwMTAwMDAwMFoXDTM2MDEwMTAwMDAwMFowIzEhMB8G\n"
    "-----END CERTIFICATE-----\n"
)


def claims_of(pod: dict[str, Any]) -> list[tuple[str, str]]:
    """(volume name, claim name) of each PVC the pod mounts."""
    return [
        (v["name"], v["persistentVolumeClaim"]["claimName"])
        for v in (pod.get("spec") or {}).get("volumes") or []
        if v.get("persistentVolumeClaim")
    ]


class ClusterControllers:
    def __init__(self, store: ObjectStore, volumes: dict[tuple[str, str], str]):
        self.store = store
        self.volumes = volumes  # (namespace, pvc) -> the data on its volume
        self.hold_termination = False  # deleted pods stay terminating (still running) while True
        store.on_remove.append(self._removed)
        store.on_create.append(self._namespace_created)

    def _namespace_created(self, res: Resource, ns: str, obj: dict[str, Any]) -> None:
        """The serviceaccount controller and the root-ca-cert-publisher, for a new namespace."""
        if res is not NAMESPACES:
            return
        name = obj["metadata"]["name"]
        for kind, made in (
            (ACCOUNTS, {"metadata": {"name": "default"}}),
            (
                CONFIGMAPS,
                {
                    "metadata": {
                        "name": ROOT_CA,
                        "annotations": {
                            "kubernetes.io/description": "Contains a CA bundle that can be used to verify "
                            "the kube-apiserver when using internal endpoints such as the internal "
                            "service IP or kubernetes.default.svc. No other usage is guaranteed across "
                            "distributions of Kubernetes clusters."
                        },
                    },
                    "data": {"ca.crt": FAKE_CA_PEM},
                },
            ),
        ):
            with suppress(ApiError):  # already there
                self.store.create(kind, name, made)

    def reconcile(self) -> None:
        self.store.finalize_namespaces()
        for dep in self.store.list(DEPLOYMENTS):
            with suppress(ApiError):  # changed or deleted meanwhile: the next tick sees it
                self._deployment(dep)
        for pvc in self.store.list(PVCS):
            with suppress(ApiError):
                self._bind(pvc)
            with suppress(ApiError):
                self._protect(pvc)
        for pod in self.store.list(PODS):
            with suppress(ApiError):
                self._kubelet(pod)
        self._collect_garbage()

    # -- deployments -> pods -----------------------------------------------------------------
    def _pods(self, ns: str, selector: dict, uid: str) -> list[dict[str, Any]]:
        """The live pods the deployment `uid` holds: its own, and orphans its selector matches
        (adopted); never one another controller holds (ClaimPods: a StatefulSet's pod with the
        same labels is not the ReplicaSet's to delete)."""
        return [
            p
            for p in self.store.list(PODS, ns, selector)
            if not p["metadata"].get("deletionTimestamp")
            and (
                not (owners := p["metadata"].get("ownerReferences"))
                or any(o.get("uid") == uid for o in owners)
            )
        ]

    def _deployment(self, listed: dict[str, Any]) -> None:
        meta = listed["metadata"]
        ns = meta["namespace"]
        with self.store.lock:  # one consistent view: the deployment as it is now, and its pods
            dep = self.store.find(DEPLOYMENTS, ns, meta["name"])
            if dep is None:
                return
            self._sync(dep)

    def _sync(self, dep: dict[str, Any]) -> None:
        meta, spec = dep["metadata"], dep.get("spec") or {}
        ns = meta["namespace"]
        pods = self._pods(ns, spec.get("selector") or {}, meta["uid"])
        want = int(spec.get("replicas", 1))
        for pod in pods[want:]:
            self.store.delete(PODS, ns, pod["metadata"]["name"])
        template = spec.get("template") or {}
        for _ in range(want - len(pods)):
            self.store.create(
                PODS,
                ns,
                {
                    "metadata": {
                        "generateName": f"{meta['name']}-",
                        "labels": (template.get("metadata") or {}).get("labels") or {},
                        "ownerReferences": [
                            {
                                "apiVersion": "apps/v1",
                                "kind": "ReplicaSet",
                                "name": meta["name"],
                                "uid": meta["uid"],
                            }
                        ],
                    },
                    "spec": template.get("spec") or {},
                },
            )
        pods = self._pods(ns, spec.get("selector") or {}, meta["uid"])
        running = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running")
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(pods),
            "readyReplicas": running,
            "availableReplicas": running,
            "updatedReplicas": len(pods),
        }
        if dep.get("status") != status:
            self.store.patch(DEPLOYMENTS, ns, meta["name"], {"status": status}, True)

    def _collect_garbage(self) -> None:
        with self.store.lock:
            uids = {obj["metadata"]["uid"] for obj in self.store.objects.values()}
            orphans = [
                (res, ns, name)
                for (res, ns, name), obj in self.store.objects.items()
                if (owners := obj["metadata"].get("ownerReferences"))
                and not obj["metadata"].get("deletionTimestamp")
                and not any(o.get("uid") in uids for o in owners)
            ]
            for res, ns, name in orphans:
                with suppress(ApiError):
                    self.store.delete(res, ns, name)

    # -- PV binder, kubelet, pvc-protection -------------------------------------------------
    def _consumers(self, ns: str) -> set[str]:
        return {claim for pod in self.store.list(PODS, ns) for _, claim in claims_of(pod)}

    def _bind(self, pvc: dict[str, Any]) -> None:
        meta, spec = pvc["metadata"], pvc.get("spec") or {}
        if (pvc.get("status") or {}).get("phase") != "Pending" or meta.get("deletionTimestamp"):
            return
        ns = meta["namespace"]
        pv_name = spec.get("volumeName")
        if pv_name:
            pv = self.store.find(PVS, "", pv_name)
            if pv is None:
                return  # pre-bound to a PV that does not exist (yet): stays Pending
            ref = (pv.get("spec") or {}).get("claimRef")
            if ref and (
                (ref.get("namespace"), ref.get("name")) != (ns, meta["name"])
                or ref.get("uid", meta["uid"]) != meta["uid"]
            ):
                # pv_controller.go syncUnboundClaim: "volume already bound to different claim"
                return
        else:
            cls = self.store.find(CLASSES, "", spec.get("storageClassName") or "")
            if cls is None:
                return  # no such class: Pending for ever, as on a real cluster
            if cls.get("volumeBindingMode") == "WaitForFirstConsumer" and meta["name"] not in self._consumers(
                ns
            ):
                return
            pv_name = f"pvc-{meta['uid']}"
            self.store.create(
                PVS,
                "",
                {
                    "metadata": {"name": pv_name},
                    "spec": {
                        "capacity": (spec.get("resources") or {}).get("requests") or {},
                        "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": cls.get("reclaimPolicy", "Delete"),
                        "storageClassName": spec.get("storageClassName"),
                        "csi": {"driver": cls.get("provisioner"), "volumeHandle": str(uuid.uuid4())},
                    },
                },
            )
            self.store.patch(PVCS, ns, meta["name"], {"spec": {"volumeName": pv_name}})
        claim_ref = {
            "kind": "PersistentVolumeClaim",
            "namespace": ns,
            "name": meta["name"],
            "uid": meta["uid"],
        }
        self.store.patch(PVS, "", pv_name, {"spec": {"claimRef": claim_ref}})
        self.store.patch(PVS, "", pv_name, {"status": {"phase": "Bound"}}, True)
        status = {"phase": "Bound", "accessModes": spec.get("accessModes")}
        self.store.patch(PVCS, ns, meta["name"], {"status": status}, True)

    def _kubelet(self, pod: dict[str, Any]) -> None:
        ns = pod["metadata"]["namespace"]
        if pod["metadata"].get("deletionTimestamp"):
            if not self.hold_termination:  # its containers have stopped: the pod goes
                with self.store.lock:
                    current = self.store.find(PODS, ns, pod["metadata"]["name"])
                    if current and current["metadata"]["uid"] == pod["metadata"]["uid"]:
                        self.store._remove(PODS, ns, pod["metadata"]["name"])
            return
        if (pod.get("status") or {}).get("phase") != "Pending":
            return
        if all(
            ((self.store.find(PVCS, ns, claim) or {}).get("status") or {}).get("phase") == "Bound"
            for _, claim in claims_of(pod)
        ):
            status = {"phase": "Running", "podIP": "10.244.0.10"}
            self.store.patch(PODS, ns, pod["metadata"]["name"], {"status": status}, True)

    def _protect(self, pvc: dict[str, Any]) -> None:
        meta = pvc["metadata"]
        # a pod that is done (Succeeded, Failed) holds no claim (pvc_protection_controller.go
        # podIsShutDown)
        users = {
            claim
            for pod in self.store.list(PODS, meta["namespace"])
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            for _, claim in claims_of(pod)
        }
        if not meta.get("deletionTimestamp") or meta["name"] in users:
            return
        rest = [f for f in meta.get("finalizers") or [] if f != PROTECTION]
        self.store.patch(PVCS, meta["namespace"], meta["name"], {"metadata": {"finalizers": rest}})

    def _removed(self, res: Resource, ns: str, name: str, obj: dict[str, Any]) -> None:
        if res is not PVCS:
            return
        self.volumes.pop((ns, name), None)  # reclaimPolicy Delete: the data goes with the claim
        pv = self.store.find(PVS, "", (obj.get("spec") or {}).get("volumeName") or "")
        if pv and (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy", "Delete") == "Delete":
            with suppress(ApiError):
                self.store.delete(PVS, "", pv["metadata"]["name"])
        elif pv:
            # Retain (pv_controller.go syncVolume): the PV stays, Released, its claimRef still
            # naming the claim that is gone; nothing binds it again until an admin deletes it
            # or clears its claimRef
            with suppress(ApiError):
                self.store.patch(PVS, "", pv["metadata"]["name"], {"status": {"phase": "Released"}}, True)
