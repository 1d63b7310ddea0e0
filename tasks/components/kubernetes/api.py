"""Kubernetes API helpers shared by the components: a client from a KubernetesTarget, errors
translated into ours, namespaces, deployments, PVCs, the kinds the project lists and their names.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from blocks.kubernetes import KubernetesTarget
from tasks.errors import BackupError, BadInput, ConfigurationError, NotFound, TransientError

log = logging.getLogger(__name__)


class AlreadyExists(BackupError):
    """The object exists already (HTTP 409)."""


def _configuration(kube: KubernetesTarget) -> client.Configuration:
    cfg = client.Configuration()
    try:
        if kube.in_cluster or (
            not kube.kubeconfig_path and not kube.kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST")
        ):
            config.load_incluster_config(client_configuration=cfg)
        elif kube.kubeconfig is not None:
            data = yaml.safe_load(kube.kubeconfig.get_secret_value())
            config.load_kube_config_from_dict(data, context=kube.context, client_configuration=cfg)
        else:  # None = $KUBECONFIG or ~/.kube/config, like kubectl
            config.load_kube_config(kube.kubeconfig_path, context=kube.context, client_configuration=cfg)
    except (ConfigException, OSError, yaml.YAMLError, TypeError) as exc:
        where = "in-cluster service account" if kube.in_cluster else (kube.kubeconfig_path or "kubeconfig")
        raise ConfigurationError(
            f"cannot load Kubernetes credentials from {where}: {str(exc)[:200]}. Set kubeconfig_path, "
            "kubeconfig or in_cluster on the KubernetesTarget block"
        ) from None
    return cfg


@dataclass
class Kube:
    """One API client and the typed APIs; `call` translates failures into tasks.errors."""

    api: client.ApiClient
    timeout: float

    @cached_property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @cached_property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @cached_property
    def storage(self) -> client.StorageV1Api:
        return client.StorageV1Api(self.api)

    @cached_property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api)

    @cached_property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self.timeout, **kwargs)
        except ApiException as exc:
            raise translate(exc, what) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ConfigurationError(
                f"{what}: cannot reach the Kubernetes API at {self.api.configuration.host} "
                f"({type(exc).__name__}): check the kubeconfig/context and the network"
            ) from None


def api_message(exc: ApiException) -> tuple[str, dict[str, Any]]:
    try:
        body = yaml.safe_load(exc.body or "") or {}
    except yaml.YAMLError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return str(body.get("message") or exc.reason or exc.status), body.get("details") or {}


def translate(exc: ApiException, what: str) -> BackupError:
    message, _ = api_message(exc)
    if exc.status == 403 and "being terminated" in message:  # not RBAC: the namespace is going away
        return TransientError(f"{what}: {message}: wait until it is gone, then retry")
    if exc.status == 403:
        return ConfigurationError(
            f"{what}: forbidden by RBAC: {message}. Grant the flow's service account this permission "
            "(docs/kubernetes.md lists what each task needs)"
        )
    if exc.status == 401:
        return ConfigurationError(
            f"{what}: the cluster refused the credentials (401): renew the kubeconfig/token"
        )
    if exc.status == 404:
        return NotFound(f"{what}: {message}")
    if exc.status == 409:
        return AlreadyExists(f"{what}: {message}")
    if exc.status in (422, 400):
        return BadInput(f"{what}: the API server rejected the request: {message}")
    if exc.status == 429 or exc.status >= 500:
        return TransientError(f"{what}: the API server answered {exc.status}: {message}")
    return ConfigurationError(f"{what}: the API server answered {exc.status}: {message}")


def connect(kube: KubernetesTarget | None) -> Kube:
    """A client for `kube` (None: in-cluster when in a pod, else $KUBECONFIG)."""
    kube = kube or KubernetesTarget()
    return Kube(client.ApiClient(_configuration(kube)), kube.request_timeout_seconds)


def wait_for(check: Callable[[], bool], timeout: float, interval: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TransientError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- namespaces ---------------------------------------------------------------------------------
def list_namespaces(k: Kube) -> list[str]:
    items = k.call("list namespaces", k.core.list_namespace).items
    return sorted(ns.metadata.name for ns in items)


def namespace_exists(k: Kube, name: str) -> bool:
    try:
        k.call(f"read namespace {name}", k.core.read_namespace, name)
        return True
    except NotFound:
        return False


def namespace_active(k: Kube, name: str) -> bool:
    """It exists and is not being deleted: the objects of a Terminating namespace are going, and
    a restore into it waits for it to go and makes it anew (Velero's
    EnsureNamespaceExistsAndIsReady)."""
    try:
        ns = k.call(f"read namespace {name}", k.core.read_namespace, name)
    except NotFound:
        return False
    return not ns.metadata.deletion_timestamp and (ns.status.phase if ns.status else None) != "Terminating"


def create_namespace(k: Kube, name: str, labels: dict[str, str] | None = None) -> None:
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    k.call(f"create namespace {name}", k.core.create_namespace, body)


def delete_namespace(k: Kube, name: str, timeout: float = 600, interval: float = 2) -> None:
    """Delete and wait until it is gone (a namespace terminates for a while)."""
    try:
        k.call(f"delete namespace {name}", k.core.delete_namespace, name)
    except NotFound:
        return
    except AlreadyExists:
        # 409 Conflict: already Terminating (a second delete while its content is being removed,
        # pkg/registry/core/namespace/storage/storage.go): wait for it like for our own delete
        log.info("namespace %s is already terminating: waiting for it to go", name)
    wait_gone(k, name, timeout, interval)


def wait_gone(k: Kube, name: str, timeout: float = 600, interval: float = 2) -> None:
    """Until namespace `name` is gone. A deleted namespace stays Terminating (refusing new
    objects, re-created only as a 409) until the namespace controller has removed all it holds;
    600 s is Velero's own wait for one (--resource-terminating-timeout)."""
    what = (
        f"namespace {name} to terminate (it goes once everything in it is gone: "
        f"`kubectl get namespace {name} -o yaml` shows in status.conditions what holds it)"
    )
    wait_for(lambda: not namespace_exists(k, name), timeout, interval, what)


# -- deployments (their scale: quiesce.py, its only user) ----------------------------------------------
def list_deployments(k: Kube, namespace: str) -> list[client.V1Deployment]:
    return k.call(f"list deployments in {namespace}", k.apps.list_namespaced_deployment, namespace).items


# -- PVCs ------------------------------------------------------------------------------------------
def list_pvcs(k: Kube, namespace: str | None = None) -> list[dict[str, Any]]:
    if namespace:
        items = k.call(
            f"list PVCs in {namespace}", k.core.list_namespaced_persistent_volume_claim, namespace
        ).items
    else:
        items = k.call("list PVCs", k.core.list_persistent_volume_claim_for_all_namespaces).items
    return [
        {
            "namespace": p.metadata.namespace,
            "name": p.metadata.name,
            "phase": p.status.phase if p.status else None,
            "storage_class": p.spec.storage_class_name,
            "capacity": ((p.spec.resources.requests or {}) if p.spec.resources else {}).get("storage"),
            "volume": p.spec.volume_name,
        }
        for p in items
    ]


def delete_pvc(k: Kube, namespace: str, name: str) -> None:
    k.call(
        f"delete PVC {namespace}/{name}", k.core.delete_namespaced_persistent_volume_claim, name, namespace
    )


def read_pv(k: Kube, name: str) -> client.V1PersistentVolume | None:
    """A PersistentVolume, or None when there is none of that name."""
    try:
        return k.call(f"read PV {name}", k.core.read_persistent_volume, name)
    except NotFound:
        return None


# -- the kinds the project lists, counts and verifies ------------------------------------------------
# plural -> (typed API attribute, method suffix): list_namespaced_<suffix>, read_namespaced_<suffix>, ...
KINDS: dict[str, tuple[str, str]] = {
    "deployments": ("apps", "deployment"),
    "services": ("core", "service"),
    "configmaps": ("core", "config_map"),
    "secrets": ("core", "secret"),
    "persistentvolumeclaims": ("core", "persistent_volume_claim"),
    # listed and verified, never written by us (no RBAC writes): restored by Velero only
    "serviceaccounts": ("core", "service_account"),
    "roles": ("rbac", "role"),
    "rolebindings": ("rbac", "role_binding"),
}
# the kinds a restore of objects by name copies into place (named.py): not the RBAC ones, which
# would need create/update on RBAC objects (and escalate/bind) for the flow-run account
COPIED_KINDS = ("deployments", "services", "configmaps", "secrets", "persistentvolumeclaims")
# Velero merges a ServiceAccount that already exists into the cluster's (pkg/restore/restore.go
# mergeServiceAccounts, then a patch, whatever existingResourcePolicy says): never "skipped".
# Every namespace has its `default` one, so a restore into an existing namespace always meets it
MERGED_KINDS = ("serviceaccounts",)
# What the cluster itself makes in every namespace, within moments of its creation: the
# serviceaccount controller its ServiceAccount `default`, the root-ca-cert-publisher its ConfigMap
# `kube-root-ca.crt` (the cluster's CA). Velero backs them up, but they are the cluster's, not the
# workload's: in a namespace Velero restores into they are there before its copies (which it then
# skips, or merges), and the CA must stay the target cluster's. So no inventory, count or check
# of ours holds them: never "missing", never "already existed" for a user to act on
CLUSTER_MANAGED = frozenset({("serviceaccounts", "default"), ("configmaps", "kube-root-ca.crt")})
ALIASES = {
    "deploy": "deployments",
    "deployment": "deployments",
    "svc": "services",
    "service": "services",
    "cm": "configmaps",
    "configmap": "configmaps",
    "secret": "secrets",
    "pvc": "persistentvolumeclaims",
    "persistentvolumeclaim": "persistentvolumeclaims",
    "pv": "persistentvolumes",
    "sa": "serviceaccounts",
    "serviceaccount": "serviceaccounts",
    "role": "roles",
    "rolebinding": "rolebindings",
    "po": "pods",
    "pod": "pods",
    "persistentvolume": "persistentvolumes",
    "ns": "namespaces",
    "namespace": "namespaces",
}
# the API group of each kind we name: 'services.serving.knative.dev' (Knative's) is not ours
GROUPS = {
    **dict.fromkeys(("services", "configmaps", "secrets", "persistentvolumeclaims", "serviceaccounts"), ""),
    **dict.fromkeys(("persistentvolumes", "pods", "namespaces"), ""),
    "deployments": "apps",
    "roles": "rbac.authorization.k8s.io",
    "rolebindings": "rbac.authorization.k8s.io",
}


def workload_names(plural: str, names: list[str]) -> list[str]:
    """`names` of kind `plural` without the objects the cluster makes in every namespace."""
    return [n for n in names if (plural, n) not in CLUSTER_MANAGED]


def canonical_resource(name: str) -> str:
    """'deploy', 'deployments.apps', 'PVC' -> the plural the API and Velero use ('deployments');
    a name of another group's resource stays whole ('services.serving.knative.dev')."""
    base = name.strip().lower()
    if base == "*":
        return base
    resource, _, group = base.partition(".")
    plural = ALIASES.get(resource, resource)
    if group and group != GROUPS.get(plural, group):
        return base
    return plural


def kind_api(k: Kube, plural: str, verb: str) -> Callable[..., Any]:
    api, suffix = KINDS[plural]
    return getattr(getattr(k, api), f"{verb}_namespaced_{suffix}")


# Names are all we need: ask for metadata only, so Secret data never reaches this process.
METADATA_ONLY = {
    "Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
}


# Velero leaves these out of every backup (pkg/backup/item_backupper.go itemInclusionChecks)
EXCLUDE_FROM_BACKUP = "velero.io/exclude-from-backup"


def list_names(
    k: Kube, namespace: str, plural: str, label_selector: str | None = None, backed_up: bool = False
) -> list[str]:
    """Sorted names of the objects of one kind, listed as metadata only (raw JSON: the typed
    models refuse objects without their spec). `backed_up`: only those a Velero backup takes,
    i.e. not labelled velero.io/exclude-from-backup=true and not being deleted. A custom kind
    ('services.serving.knative.dev'; custom.py) the cluster does not serve holds none."""
    if "." in plural:
        from tasks.components.kubernetes import custom  # it builds on this module

        return custom.list_names(k, namespace, plural, label_selector, backed_up) or []
    fn = kind_api(k, plural, "list")
    what = f"list {plural} in {namespace}"
    resp = k.call(
        what,
        fn,
        namespace,
        label_selector=label_selector or None,
        _headers=METADATA_ONLY,
        _preload_content=False,
    )
    return listed_names(resp.data, what, backed_up)


def listed_names(data: bytes, what: str, backed_up: bool) -> list[str]:
    """The names in a metadata-only list response; `backed_up`: only those Velero backs up (not
    labelled exclude-from-backup, not being deleted)."""
    items = listed_items(data, what)
    if backed_up:
        items = [
            i
            for i in items
            if (i["metadata"].get("labels") or {}).get(EXCLUDE_FROM_BACKUP) != "true"
            and not i["metadata"].get("deletionTimestamp")
        ]
    return sorted(i["metadata"]["name"] for i in items)


def listed_items(data: bytes, what: str) -> list[dict[str, Any]]:
    """The items of a list response (metadata-only ones: their metadata)."""
    try:
        return json.loads(data)["items"] or []
    except (ValueError, KeyError, TypeError):
        raise TransientError(f"{what}: the API server sent an unreadable list") from None


def selector_string(labels: dict[str, str] | None) -> str | None:
    return ",".join(f"{key}={value}" for key, value in sorted((labels or {}).items())) or None


__all__ = [
    "CLUSTER_MANAGED",
    "COPIED_KINDS",
    "KINDS",
    "MERGED_KINDS",
    "canonical_resource",
    "kind_api",
    "list_names",
    "workload_names",
    "selector_string",
    "AlreadyExists",
    "Kube",
    "connect",
    "translate",
    "wait_for",
    "list_namespaces",
    "namespace_exists",
    "namespace_active",
    "wait_gone",
    "create_namespace",
    "delete_namespace",
    "list_deployments",
    "list_pvcs",
    "delete_pvc",
    "read_pv",
]
