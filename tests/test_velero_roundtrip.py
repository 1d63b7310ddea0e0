"""What a Velero backup holds and a restore brings back, against the whole state of the
namespace (normalised as Velero restores objects: without what the server sets, status,
allocated cluster IPs and the restore labels), and what the emulated Velero leaves out as
the real one does (pkg/backup/item_backupper.go itemInclusionChecks)."""

from __future__ import annotations

import json
import secrets

from sandbox.k8s_emulator.controllers import DEPLOYMENTS
from sandbox.k8s_emulator.snapshot import CONFIGMAPS, NAMESPACES, SERVICES
from sandbox.k8s_emulator.store import BY_PATH
from tasks.components import kubernetes as velero
from tasks.storage.session import backup_session
from tests.k8s_helpers import install_knative_crd, seed_knative_service, seed_namespaces, seed_settings

SECRETS = BY_PATH[("v1", "secrets")]
SERVER_SET = {"uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "generateName"}
SERVER_SET |= {"ownerReferences", "selfLink"}  # restore.go resetMetadata drops these too


def take_backup(kube_api, store, ns: str):
    target = kube_api.velero_target(include_namespaces=[ns])
    with backup_session(store, "kubernetes") as session:
        velero.backup(target, session)
        session.commit()
    return target, session.manifest


def delete_namespace(ctl, ns: str) -> None:
    ctl.store.delete(NAMESPACES, "", ns)
    ctl.settle(lambda: ctl.store.find(NAMESPACES, "", ns) is None)


def test_velero_leaves_out_excluded_objects_and_objects_being_deleted_and_the_restore_expects_neither(
    kube_api, ctl, local_store
):
    """item_backupper.go itemInclusionChecks: an object labelled velero.io/exclude-from-backup=true
    and one being deleted (a deletionTimestamp, held by a finalizer) are not backed up. The
    emulated Velero backed both up, and our inventory listed both: on a real cluster every
    restore of such a backup ended in IntegrityError ("Completed but these objects are missing")."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "skip", seed=seed_settings)
    excluded = {"name": "scratch", "labels": {"velero.io/exclude-from-backup": "true"}}
    ctl.seed("v1", "configmaps", ns, {"metadata": excluded, "data": {"tmp": "1"}})
    going = {"name": "going", "finalizers": ["example.com/hold"]}
    ctl.seed("v1", "configmaps", ns, {"metadata": going, "data": {"old": "1"}})
    ctl.store.delete(CONFIGMAPS, ns, "going")  # held by its finalizer: deletionTimestamp only
    target, manifest = take_backup(kube_api, store, ns)
    doc = velero.load_document(store, manifest)
    assert doc["inventory"][ns]["configmaps"] == ["settings"]
    # its finalizer's owner lets it go: it would keep the namespace Terminating
    ctl.store.patch(CONFIGMAPS, ns, "going", {"metadata": {"finalizers": None}})
    delete_namespace(ctl, ns)

    report = velero.restore(target, manifest, store, velero.RestoreOptions())

    assert report["phase"] == "Completed" and report["verified_objects"] == 1
    # and the cluster's kube-root-ca.crt, in every namespace (never in our inventory)
    assert [c["metadata"]["name"] for c in ctl.store.list(CONFIGMAPS, ns)] == ["kube-root-ca.crt", "settings"]


def applied(doc: dict) -> dict:
    """`doc` as `kubectl apply` creates it: with its last-applied-configuration annotation."""
    notes = doc["metadata"].setdefault("annotations", {})
    notes["kubectl.kubernetes.io/last-applied-configuration"] = json.dumps(doc, sort_keys=True)
    return doc


def seed_broad(ctl, ns: str) -> None:
    """A namespace with most of what an application namespace holds."""
    ctl.store.create(
        NAMESPACES,
        "",
        {
            "metadata": {
                "name": ns,
                "labels": {"team": "lambda", "pod-security.kubernetes.io/enforce": "baseline"},
                "annotations": {"scheduler.alpha.kubernetes.io/node-selector": "pool=apps"},
            }
        },
    )
    ctl.seed_pvc(ns, "data", content="volume v1")
    ctl.seed_deployment(ns, "api", 2, pvcs=("data",))
    ctl.seed("v1", "configmaps", ns, {"metadata": {"name": "settings"}, "data": {"mode": "prod"}})
    ctl.seed("v1", "configmaps", ns, {"metadata": {"name": "frozen"}, "data": {"a": "1"}, "immutable": True})
    secret = {"name": "tls", "annotations": {"cert-manager.io/issuer": "ca"}}
    tls = {"metadata": secret, "type": "kubernetes.io/tls", "data": {"tls.crt": "Yw=="}}
    ctl.seed("v1", "secrets", ns, tls)
    account = {"metadata": {"name": "runner"}, "automountServiceAccountToken": False}
    ctl.seed("v1", "serviceaccounts", ns, account)
    rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}
    ctl.seed("rbac.authorization.k8s.io/v1", "roles", ns, {"metadata": {"name": "read"}, "rules": [rule]})
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read"}
    subject = {"kind": "ServiceAccount", "name": "runner", "namespace": ns}
    binding = {"metadata": {"name": "read"}, "roleRef": ref, "subjects": [subject]}
    ctl.seed("rbac.authorization.k8s.io/v1", "rolebindings", ns, binding)
    ports = [{"name": "http", "port": 80}]
    ctl.seed("v1", "services", ns, {"metadata": {"name": "api"}, "spec": {"ports": ports}})
    headless = {"clusterIP": "None", "ports": ports, "selector": {"app": "api"}}
    ctl.seed("v1", "services", ns, {"metadata": {"name": "peers"}, "spec": headless})
    node_port = {"type": "NodePort", "ports": ports}
    ctl.seed("v1", "services", ns, {"metadata": {"name": "auto"}, "spec": node_port})
    fixed = {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
    ctl.seed("v1", "services", ns, applied({"metadata": {"name": "fixed"}, "spec": fixed}))
    # the platform's workload, a custom resource, named like a core Service (as Knative's are)
    install_knative_crd(ctl)
    seed_knative_service(ctl, ns, "api")
    ctl.seed("v1", "configmaps", ns, {"metadata": {"name": "blob"}, "binaryData": {"b": "AAEC"}})


def whole_state(ctl, ns: str) -> dict:
    """Every object of `ns` and the namespace itself, as Velero would restore them (keyed by
    group resource: a Knative Service and the core Service of its name are two objects)."""
    out = {}
    with ctl.store.lock:
        items = [(r, n, o) for (r, o_ns, n), o in ctl.store.objects.items() if ns in (o_ns, n)]
    for res, name, obj in items:
        if res.group == "velero.io" or (not res.namespaced and res is not NAMESPACES):
            continue
        obj = json.loads(json.dumps(obj))
        meta = {k: v for k, v in obj.pop("metadata").items() if k not in SERVER_SET}
        labels = {k: v for k, v in (meta.pop("labels", None) or {}).items() if not k.startswith("velero.io/")}
        obj.pop("status", None)
        spec = obj.get("spec") or {}
        if res is SERVICES:  # allocated by the cluster: Velero's service action drops them
            if spec.get("clusterIP") != "None":
                spec.pop("clusterIP"), spec.pop("clusterIPs")
            if name == "auto":
                spec["ports"][0].pop("nodePort")
        out[(res.group_resource, name)] = {**obj, "metadata": meta, "labels": labels}
    return out


def test_a_namespace_comes_back_exactly_as_it_was_backed_up(kube_api, ctl, local_store):
    """Back up a namespace holding most kinds, delete it, restore it, compare the whole state.
    The emulated Velero made the namespace with its labels only (restore.go getNamespace takes
    labels, annotations and spec from the backup) and dropped every nodePort of a Service,
    where service_action.go deleteNodePorts keeps those the last-applied-configuration names."""
    store = local_store()
    ns = f"broad-{secrets.token_hex(3)}"
    seed_broad(ctl, ns)
    before = whole_state(ctl, ns)
    target, manifest = take_backup(kube_api, store, ns)
    delete_namespace(ctl, ns)

    report = velero.restore(target, manifest, store, velero.RestoreOptions())

    assert report["phase"] == "Completed" and report["warnings"] == 0
    ctl.settle(lambda: len([k for k in whole_state(ctl, ns) if k[0] == "pods"]) == 2)
    after = whole_state(ctl, ns)
    assert sorted(after) == sorted(before)
    assert {k: v for k, v in after.items() if v != before[k]} == {}
    assert ctl.volumes[(ns, "data")] == "volume v1"


def seed_fixed_port(ctl, ns: str) -> None:
    seed_settings(ctl, ns)
    fixed = {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
    ctl.seed("v1", "services", ns, applied({"metadata": {"name": "fixed"}, "spec": fixed}))


def test_a_drill_beside_a_service_with_a_fixed_node_port_verifies(kube_api, ctl, local_store):
    """Velero keeps a nodePort `kubectl apply` asked for; its copy in a drill namespace, next to the
    original, is refused by the API (422 'provided port is already allocated'): an item error, the
    restore PartiallyFailed, every drill of such a namespace failed on a real cluster. The drill's
    copies give up the nodePorts the cluster has already allocated (a resource modifier)."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "port", seed=seed_fixed_port)
    target, manifest = take_backup(kube_api, store, ns)

    report = velero.drill(target, manifest, store, f"p{secrets.token_hex(2)}")

    assert report["verified"] is True
    assert report["checks"][f"{ns}/services"] == {"expected": 1, "restored": 1}
    assert ctl.store.get(SERVICES, ns, "fixed")["spec"]["ports"][0]["nodePort"] == 30080


def test_one_object_by_name_beside_a_service_with_a_fixed_node_port(kube_api, ctl, local_store):
    """A restore of one object by name restores its types aside, next to the originals: the same
    refusal failed it for any namespace holding a Service with a fixed nodePort."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "named", seed=seed_fixed_port)
    ctl.seed("v1", "services", ns, {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}})
    target, manifest = take_backup(kube_api, store, ns)
    ctl.store.delete(SERVICES, ns, "web")

    options = velero.RestoreOptions(namespaces=[ns], resources=["services"], names=["web"])
    report = velero.restore(target, manifest, store, options)

    assert report["restored_objects"] == [f"{ns}/services/web"]
    assert ctl.store.get(SERVICES, ns, "fixed")["spec"]["ports"][0]["nodePort"] == 30080


def seed_newer_fields(ctl, ns: str) -> None:
    """Objects carrying fields of an API server newer than the `kubernetes` client (its typed
    models know only the fields of their release), beside labels, annotations and spec details."""
    ctl.seed_namespace(ns, {"team": "lambda"})
    ctl.seed_pvc(ns, "data", content="volume v1")
    labels = {"app": "api", "tier": "web"}
    container = {"name": "api", "image": "registry.local/api:1", "futureContainerField": {"mode": "x"}}
    pod = {"containers": [container], "futurePodField": True}
    template = {"metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true"}}, "spec": pod}
    spec = {"replicas": 1, "selector": {"matchLabels": labels}, "template": template}
    spec |= {"revisionHistoryLimit": 3, "futureDeploymentField": "kept"}
    meta = {"name": "api", "labels": {"team": "lambda"}, "annotations": {"owner": "sre"}}
    ctl.seed("apps/v1", "deployments", ns, {"metadata": meta, "spec": spec})
    ports = [{"name": "http", "port": 80, "targetPort": "http", "futurePortField": 1}]
    svc = {"ports": ports, "selector": labels, "futureServiceField": ["a", "b"]}
    ctl.seed("v1", "services", ns, {"metadata": {**meta, "name": "web"}, "spec": svc})
    cm = {"metadata": {**meta, "name": "settings"}, "data": {"mode": "prod"}, "binaryData": {"b": "AAEC"}}
    ctl.seed("v1", "configmaps", ns, cm)
    secret = {"metadata": {**meta, "name": "tls"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "Yw=="}}
    ctl.seed("v1", "secrets", ns, secret)


def test_objects_restored_by_name_come_back_whole(kube_api, ctl, local_store):
    """A restore by name read Velero's copies through the client's typed models and wrote those
    back: every field the client's release does not know was dropped on the way (the copy put in
    place lacked what the backup held). Every named object must come back as it was backed up,
    but for what the API server owns."""
    store = local_store()
    ns = f"whole-{secrets.token_hex(3)}"
    seed_newer_fields(ctl, ns)
    named = [("deployments.apps", "api"), ("services", "web"), ("configmaps", "settings"), ("secrets", "tls")]
    before = {key: obj for key, obj in whole_state(ctl, ns).items() if key in named}
    assert len(before) == 4
    target, manifest = take_backup(kube_api, store, ns)
    for res, name in (
        ("deployments", "api"),
        ("services", "web"),
        ("configmaps", "settings"),
        ("secrets", "tls"),
    ):
        res_ = {"deployments": DEPLOYMENTS, "services": SERVICES, "configmaps": CONFIGMAPS}.get(res, SECRETS)
        ctl.store.delete(res_, ns, name)

    options = velero.RestoreOptions(
        namespaces=[ns],
        resources=["deployments", "services", "configmaps", "secrets"],
        names=["api", "web", "settings", "tls"],
    )
    report = velero.restore(target, manifest, store, options)

    assert len(report["restored_objects"]) == 4
    after = {key: obj for key, obj in whole_state(ctl, ns).items() if key in named}
    assert {k: v for k, v in after.items() if v != before[k]} == {}
