"""The emulated API server's object store: resources by (group/version, plural, namespace, name).
The resources are in resources.py (re-exported here), CRDs and custom resources in crds.py.

Thread-safe; every write bumps a global resourceVersion like etcd's revision does.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sandbox.k8s_emulator import crds
from sandbox.k8s_emulator.admission import admit_pod
from sandbox.k8s_emulator.allocation import ServiceAllocator
from sandbox.k8s_emulator.errors import ApiError, not_found
from sandbox.k8s_emulator.immutability import update_errors
from sandbox.k8s_emulator.patches import apply_patch, json_patch, merge_patch
from sandbox.k8s_emulator.resources import BY_PATH, CRDS, RESOURCES, WORKLOAD, Resource
from sandbox.k8s_emulator.validation import (
    VELERO_FIELDS,
    check_fields,
    generated_name,
    prune,
    validate_metadata,
)

__all__ = ["BY_PATH", "CRDS", "RESOURCES", "WORKLOAD", "ApiError", "ObjectStore", "Resource"]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def match_labels(labels: dict[str, str], selector: str | dict | None) -> bool:
    """A label selector as a query string ('a=b,c!=d,e,!f,g in (x,y)') or a LabelSelector dict."""
    if not selector:
        return True
    if isinstance(selector, dict):
        for key, value in (selector.get("matchLabels") or {}).items():
            if labels.get(key) != value:
                return False
        for expr in selector.get("matchExpressions") or []:
            key, op, values = expr["key"], expr["operator"], expr.get("values") or []
            if op == "In" and labels.get(key) not in values:
                return False
            if op == "NotIn" and labels.get(key) in values:
                return False
            if op == "Exists" and key not in labels:
                return False
            if op == "DoesNotExist" and key in labels:
                return False
        return True
    for term in _split_terms(selector):
        term = term.strip()
        if " in " in term or " notin " in term:
            key, op, rest = term.split(None, 2)
            values = [v.strip() for v in rest.strip("() ").split(",")]
            if (labels.get(key) in values) != (op == "in"):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term and term not in labels:
            return False
    return True


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    return [*terms, cur]


class ObjectStore:
    """Objects by (resource, namespace, name). Besides storage it does what the API server does
    on a write: validation (validation.py), defaults and allocation (services), finalizers and
    deletionTimestamp, Terminating namespaces, pruning of custom resources."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[Resource, str, str], dict[str, Any]] = {}
        self.revision = 1
        self.namespace_termination_seconds = 0.0
        self.terminating: dict[str, float] = {}  # namespace -> when its content starts to go
        self.finalizing: set[str] = set()  # those whose content is being deleted
        self.created: list[tuple[str, str, str, dict]] = []  # (plural, ns, name, labels) of every create
        self.on_remove: list = []  # callbacks(res, ns, name, obj) when an object is really gone
        self.on_create: list = []  # callbacks(res, ns, obj) after a create, under the lock
        self.services = ServiceAllocator()
        # the custom resources' schemas as installed (an older Velero's CRDs declare fewer fields)
        self.crd_fields = copy.deepcopy(VELERO_FIELDS)

    def clear(self) -> None:
        with self.lock:
            self.objects.clear()
            self.terminating.clear()
            self.finalizing.clear()
            self.created.clear()
            self.services = ServiceAllocator()
            self.crd_fields = copy.deepcopy(VELERO_FIELDS)

    def _stamp(self, obj: dict[str, Any]) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)

    def dry_run(self, write: Callable[[], Any]) -> Any:
        """`?dryRun=All`: the write goes through validation, admission, defaults and allocation
        (its answer is what the real write would get, a refusal included) and nothing is kept;
        no controller hears of it."""
        with self.lock:
            saved = (dict(self.objects), self.revision, list(self.created), copy.deepcopy(self.services))
            hooks = self.on_create, self.on_remove
            self.on_create, self.on_remove = [], []
            try:
                return write()
            finally:
                self.objects, self.revision, self.created, self.services = saved
                self.on_create, self.on_remove = hooks

    def get(self, res: Resource, ns: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects.get((res, ns, name))
            if obj is None:
                raise not_found(res, name)
            return copy.deepcopy(obj)

    def find(self, res: Resource, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.get((res, ns, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, res: Resource, ns: str | None = None, selector: str | dict | None = None) -> list[dict]:
        with self.lock:
            out = [
                copy.deepcopy(obj)
                for (r, o_ns, _), obj in sorted(self.objects.items(), key=lambda kv: kv[0][1:])
                if r == res
                and (ns is None or o_ns == ns)
                and match_labels(obj["metadata"].get("labels") or {}, selector)
            ]
        return out

    def create(self, res: Resource, ns: str, obj: dict[str, Any], strict: bool = False) -> dict[str, Any]:
        """`strict`: the request's fieldValidation=Strict (unknown fields are a 400)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = generated_name(meta["generateName"])
            meta["name"] = name
        if not name:
            raise ApiError(422, "Invalid", f"{res.kind} is invalid: metadata.name: Required value")
        validate_metadata(res.kind, res.builtin, obj, creating=True)
        with self.lock:
            if res.namespaced:
                if (BY_PATH[("v1", "namespaces")], "", ns) not in self.objects:
                    raise ApiError(
                        404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}
                    )
                if ns in self.terminating:
                    raise ApiError(
                        403,
                        "Forbidden",
                        f'{res.plural} "{name}" is forbidden: unable to create new content in namespace '
                        f"{ns} because it is being terminated",
                    )
                meta["namespace"] = ns
                if res.builtin == "pods":
                    refused = admit_pod(self.objects.get((BY_PATH[("v1", "namespaces")], "", ns)), obj)
                    if refused:
                        raise ApiError(403, "Forbidden", refused, {"name": name, "kind": "pods"})
            if (res, ns, name) in self.objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{res.group_resource} "{name}" already exists',
                    {"name": name, "group": res.group, "kind": res.plural},
                )
            if res.builtin == "deployments" and not ((obj.get("spec") or {}).get("template")):
                raise ApiError(
                    422, "Invalid", f'Deployment.apps "{name}" is invalid: spec.template: Required value'
                )
            obj["apiVersion"], obj["kind"] = res.group_version, res.kind
            for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation"):
                meta.pop(key, None)  # the server's to set, never the client's
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
            check_fields(res.kind, obj, self.crd_fields.get(res.builtin), strict)
            prune(obj, self.crd_fields.get(res.builtin))
            if res.custom or res == CRDS:  # a CRD's own checks, a custom resource's schema
                crds.admit(self, res, obj, None, strict)
            defaults(res, obj, self.services)
            self._stamp(obj)
            self.objects[(res, ns, name)] = obj
            self.created.append((res.plural, ns, name, dict(meta.get("labels") or {})))
            for hook in self.on_create:
                hook(res, ns, obj)
            return copy.deepcopy(obj)

    def replace(
        self,
        res: Resource,
        ns: str,
        name: str,
        obj: dict[str, Any],
        status: bool = False,
        strict: bool = False,
    ) -> dict:
        with self.lock:
            old = self.objects.get((res, ns, name))
            if old is None:
                raise not_found(res, name)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {res.group_resource} "{name}": the object has '
                    "been modified; please apply your changes to the latest version and try again",
                )
            new = copy.deepcopy(obj)
            if status:  # the /status subresource changes only status
                new = {**copy.deepcopy(old), "status": new.get("status", {})}
            elif "status" in old and res.status_subresource:  # and the main resource never does
                new["status"] = copy.deepcopy(old["status"])
            meta = new.setdefault("metadata", {})
            for key in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
                else:
                    meta.pop(key, None)
            validate_metadata(res.kind, res.builtin, new, creating=False)
            if res.builtin == "secrets" and not new.get("type"):
                new["type"] = "Opaque"  # SetDefaults_Secret runs on every decode, updates too
            causes = [] if status else update_errors(res.builtin, old, new)
            if causes:
                raise ApiError(
                    422,
                    "Invalid",
                    f'{res.kind} "{name}" is invalid: ' + ", ".join(causes),
                    {"name": name, "kind": res.kind, "causes": [{"message": c} for c in causes]},
                )
            new["apiVersion"], new["kind"] = res.group_version, res.kind
            check_fields(res.kind, new, self.crd_fields.get(res.builtin), strict)
            prune(new, self.crd_fields.get(res.builtin))
            if res.custom or res == CRDS:
                crds.admit(self, res, new, old, strict)
            if new.get("spec") != old.get("spec"):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
            if res.builtin == "deployments":
                new["status"] = {**(new.get("status") or {}), "observedGeneration": meta.get("generation", 1)}
            self._stamp(new)
            self.objects[(res, ns, name)] = new
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                self._remove(res, ns, name)  # the last finalizer is gone: so is the object
            return copy.deepcopy(new)

    def patch(
        self,
        res: Resource,
        ns: str,
        name: str,
        patch: Any,
        status: bool = False,
        content_type: str = "",
        strict: bool = False,
    ) -> dict:
        """`content_type` empty: the emulator's own (controller) writes, a merge patch."""
        with self.lock:
            old = self.get(res, ns, name)
            if content_type:
                custom = res.custom or res.group == "velero.io"
                new = apply_patch(old, patch, content_type, custom, res.builtin)
            else:
                new = json_patch(old, patch) if isinstance(patch, list) else merge_patch(old, patch)
            # a resourceVersion in the patch is a precondition (409 when stale), as in an update
            asked = ((patch.get("metadata") or {}) if isinstance(patch, dict) else {}).get("resourceVersion")
            new["metadata"]["resourceVersion"] = asked or old["metadata"]["resourceVersion"]
            return self.replace(res, ns, name, new, status=status, strict=strict)

    def delete(self, res: Resource, ns: str, name: str) -> dict[str, Any]:
        """Objects with finalizers are only marked (deletionTimestamp) until the last one is
        removed (kubernetes.io/docs/concepts/overview/working-with-objects/finalizers/)."""
        with self.lock:
            obj = self.objects.get((res, ns, name))
            if obj is None:
                raise not_found(res, name)
            meta = obj["metadata"]
            if res.builtin == "namespaces" and meta.get("deletionTimestamp"):
                # pkg/registry/core/namespace/storage/storage.go: a second delete while finalizing
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on namespaces "{name}": The system is ensuring all '
                    "content is removed from this namespace.  Upon completion, this namespace will "
                    "automatically be purged by the system.",
                    {"name": name, "kind": "namespaces"},
                )
            if res.builtin == "namespaces" and self.namespace_termination_seconds > 0:
                meta["deletionTimestamp"] = now_iso()
                obj["status"] = {"phase": "Terminating"}
                self._stamp(obj)
                self.terminating.setdefault(name, time.monotonic() + self.namespace_termination_seconds)
                return copy.deepcopy(obj)
            if res.builtin == "pods":
                # graceful deletion (pkg/registry/core/pod/strategy.go CheckGracefulDelete): the pod
                # is marked and keeps running its grace period; the kubelet removes it (controllers.py)
                grace = (obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                meta.setdefault("deletionGracePeriodSeconds", grace)
            if meta.get("finalizers") or res.builtin == "pods":
                meta.setdefault("deletionTimestamp", now_iso())
                self._stamp(obj)
                return copy.deepcopy(obj)
            self._remove(res, ns, name)
            return obj

    def _remove(self, res: Resource, ns: str, name: str) -> None:
        obj = self.objects.pop((res, ns, name), None)
        if obj is None:
            return
        if res.builtin == "services":
            self.services.release(obj)
        if res.builtin == "namespaces":
            for key in [k for k in self.objects if k[0].namespaced and k[1] == name]:
                self._remove(*key)
        if res == CRDS:
            crds.removed(self, obj)
        for hook in self.on_remove:
            hook(res, ns, name, obj)

    def activity(self) -> tuple[int, int, bool]:
        """Changes the controllers must see: every write bumps the revision or the object count,
        and a Terminating namespace whose time has come is due for removal."""
        now = time.monotonic()
        due = any(t <= now and n not in self.finalizing for n, t in self.terminating.items())
        return self.revision, len(self.objects), due

    def finalize_namespaces(self) -> None:
        """The namespace controller's `kubernetes` finalizer (pkg/controller/namespace/deletion),
        run by the controller loop: each object in a namespace whose time has come is deleted as
        by a client (finalizers hold it, pods terminate); the namespace goes once it is empty."""
        with self.lock:
            for name, due in list(self.terminating.items()):
                if time.monotonic() < due:
                    continue
                self.finalizing.add(name)
                content = [k for k in self.objects if k[0].namespaced and k[1] == name]
                for key in content:
                    obj = self.objects.get(key)
                    if obj is not None and not obj["metadata"].get("deletionTimestamp"):
                        self.delete(*key)  # marked only: no new revision on every pass
                if not any(k[0].namespaced and k[1] == name for k in self.objects):
                    self._remove(BY_PATH[("v1", "namespaces")], "", name)
                    del self.terminating[name]
                    self.finalizing.discard(name)


def defaults(res: Resource, obj: dict[str, Any], services: ServiceAllocator) -> None:
    """What the server sets on create (status is never the client's to set on create)."""
    if res.builtin == "namespaces":
        obj.setdefault("spec", {})["finalizers"] = ["kubernetes"]
        obj["status"] = {"phase": "Active"}
    elif res.builtin == "deployments":
        obj.setdefault("spec", {}).setdefault("replicas", 1)
        obj["status"] = {"observedGeneration": 1}  # the deployment controller fills in the rest
    elif res.builtin == "persistentvolumeclaims":
        # pvc-protection admission adds the finalizer; the binder binds it (controllers.py)
        obj["metadata"].setdefault("finalizers", [])
        if "kubernetes.io/pvc-protection" not in obj["metadata"]["finalizers"]:
            obj["metadata"]["finalizers"].append("kubernetes.io/pvc-protection")
        obj["status"] = {"phase": "Pending"}
    elif res.builtin == "persistentvolumes":
        obj["status"] = {"phase": "Bound" if (obj.get("spec") or {}).get("claimRef") else "Available"}
    elif res.builtin == "pods":
        obj["status"] = {"phase": "Pending"}  # the kubelet runs it (controllers.py)
    elif res.builtin == "services":
        services.allocate(obj)
    elif res.builtin == "secrets" and not obj.get("type"):
        obj["type"] = "Opaque"  # SetDefaults_Secret (pkg/apis/core/v1/defaults.go)
    elif res.group == "velero.io" and res.status_subresource and res.builtin != "backupstoragelocations":
        obj.pop("status", None)  # Velero's controllers write it through /status
