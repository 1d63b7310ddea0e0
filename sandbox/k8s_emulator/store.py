"""The emulated API server's object store: resources by (group/version, plural, namespace, name).

Thread-safe; every write bumps a global resourceVersion like etcd's revision does.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Resource:
    group_version: str  # "v1", "apps/v1", "velero.io/v1"
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]

    @property
    def group_resource(self) -> str:
        """Velero's spelling: 'deployments.apps', 'configmaps' (core has no group)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


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
    # identities and RBAC (sandbox/k8s_emulator/rbac.py enforces them)
    Resource("v1", "serviceaccounts", "ServiceAccount"),
    Resource("rbac.authorization.k8s.io/v1", "roles", "Role"),
    Resource("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
    Resource("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", namespaced=False),
    Resource("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
]
BY_PATH = {(r.group_version, r.plural): r for r in RESOURCES}
# What a Velero backup captures from a namespace (the emulator's "all resources").
WORKLOAD = [r for r in RESOURCES if r.namespaced and r.group != "velero.io"]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{res.group_resource} "{name}" not found',
        {"name": name, "group": res.group, "kind": res.plural},
    )


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
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[Resource, str, str], dict[str, Any]] = {}
        self.revision = 1
        self.namespace_termination_seconds = 0.0
        self.terminating: dict[str, float] = {}  # namespace -> when it is finally removed

    def _stamp(self, obj: dict[str, Any]) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)

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

    def create(self, res: Resource, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["name"] = name
        if not name:
            raise ApiError(422, "Invalid", f"{res.kind} is invalid: metadata.name: Required value")
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
            if (res, ns, name) in self.objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{res.group_resource} "{name}" already exists',
                    {"name": name, "group": res.group, "kind": res.plural},
                )
            if res.plural == "deployments" and not ((obj.get("spec") or {}).get("template")):
                raise ApiError(
                    422, "Invalid", f'Deployment.apps "{name}" is invalid: spec.template: Required value'
                )
            obj["apiVersion"], obj["kind"] = res.group_version, res.kind
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
            if res.plural == "namespaces":
                obj["status"] = {"phase": "Active"}
            if res.plural == "deployments":
                _deployment_status(obj)
            if res.plural == "persistentvolumeclaims" and not obj.get("status"):
                obj["status"] = {"phase": "Bound"}  # a provisioner binds it at once
            self._stamp(obj)
            self.objects[(res, ns, name)] = obj
            return copy.deepcopy(obj)

    def replace(self, res: Resource, ns: str, name: str, obj: dict[str, Any], status: bool = False) -> dict:
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
            elif "status" in old:  # and the main resource never changes status
                new["status"] = copy.deepcopy(old["status"])
            meta = new.setdefault("metadata", {})
            for key in ("uid", "creationTimestamp", "namespace", "name"):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
            new["apiVersion"], new["kind"] = res.group_version, res.kind
            if new.get("spec") != old.get("spec"):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
            if res.plural == "deployments":
                _deployment_status(new)
            self._stamp(new)
            self.objects[(res, ns, name)] = new
            return copy.deepcopy(new)

    def patch(self, res: Resource, ns: str, name: str, patch: Any, status: bool = False) -> dict:
        with self.lock:
            old = self.get(res, ns, name)
            new = json_patch(old, patch) if isinstance(patch, list) else merge_patch(old, patch)
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self.replace(res, ns, name, new, status=status)

    def delete(self, res: Resource, ns: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects.get((res, ns, name))
            if obj is None:
                raise not_found(res, name)
            if res.plural == "namespaces" and self.namespace_termination_seconds > 0:
                # like a real cluster: Terminating for a while, then gone (see finalize_namespaces)
                obj["metadata"].setdefault("deletionTimestamp", now_iso())
                obj["status"] = {"phase": "Terminating"}
                self.terminating.setdefault(name, time.monotonic() + self.namespace_termination_seconds)
                return copy.deepcopy(obj)
            del self.objects[(res, ns, name)]
            if res.plural == "namespaces":
                self._purge(name)
            return obj

    def _purge(self, namespace: str) -> None:
        for key in [k for k in self.objects if k[0].namespaced and k[1] == namespace]:
            del self.objects[key]

    def finalize_namespaces(self) -> None:
        """Remove the namespaces whose termination time has come (called by the controller loop)."""
        with self.lock:
            for name, due in list(self.terminating.items()):
                if time.monotonic() >= due:
                    self.objects.pop((BY_PATH[("v1", "namespaces")], "", name), None)
                    self._purge(name)
                    del self.terminating[name]


def _deployment_status(obj: dict[str, Any]) -> None:
    """No pods here: a deployment is instantly at its desired replica count."""
    replicas = (obj.get("spec") or {}).get("replicas", 1)
    obj.setdefault("spec", {})["replicas"] = replicas
    obj["status"] = {
        "replicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "updatedReplicas": replicas,
        "observedGeneration": obj["metadata"].get("generation", 1),
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 (also used for strategic-merge patches: the emulator has no list merge keys)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add/replace/remove/test, enough for resource modifiers and the client's patches."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(idx, op["value"])
            elif kind == "replace":
                parent[idx] = op["value"]
            elif kind == "remove":
                parent.pop(idx)
        elif kind in ("add", "replace"):
            parent[last] = op["value"]
        elif kind == "remove":
            parent.pop(last, None)
        elif kind == "test" and parent.get(last) != op["value"]:
            raise ApiError(422, "Invalid", f"test operation failed at {op['path']}")
    return doc
