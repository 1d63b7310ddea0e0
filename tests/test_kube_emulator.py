"""The emulated Kubernetes API server is as strict as a real one (sandbox/k8s_emulator/).

Each test names where the real behaviour is documented; each fails against the emulator's old
lenient behaviour (names unchecked, 200 on a second namespace delete, finalizers ignored, no
allocation, instant binding, any PATCH accepted, no pruning, state leaking between tests).
Requests go through the real `kubernetes` client over HTTP.
"""

from __future__ import annotations

import json
import secrets

import pytest
from kubernetes.client.exceptions import ApiException

from sandbox.k8s_emulator.store import BY_PATH, ApiError
from tests.k8s_helpers import k8s

PVCS, NAMESPACES = BY_PATH[("v1", "persistentvolumeclaims")], BY_PATH[("v1", "namespaces")]


@pytest.fixture
def ns(kube_api) -> str:
    name = "emu-" + secrets.token_hex(3)
    kube_api.controller.seed_namespace(name)
    return name


def status_of(call) -> int:
    with pytest.raises(ApiException) as info:
        call()
    return info.value.status


def velero_cr(kind: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "velero.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def test_names_must_be_lowercase_rfc1123(kube_api, ns):
    """k8s.io/apimachinery/pkg/util/validation/validation.go IsDNS1123Subdomain (most kinds and
    custom resources) and IsDNS1123Label (ValidateNamespaceName, ValidateServiceName in
    pkg/apis/core/validation/validation.go): 422 Invalid."""
    k = k8s(kube_api)
    backup = velero_cr("Backup", "kubernetes-20261124T014758Z-d20921", {"includedNamespaces": [ns]})
    assert (
        status_of(
            lambda: k.custom.create_namespaced_custom_object("velero.io", "v1", "velero", "backups", backup)
        )
        == 422
    )
    assert status_of(lambda: k.core.create_namespace({"metadata": {"name": "has.dot"}})) == 422
    assert (
        status_of(
            lambda: k.core.create_namespaced_service(
                ns, {"metadata": {"name": "a.b"}, "spec": {"ports": [{"port": 1}]}}
            )
        )
        == 422
    )
    assert (
        status_of(lambda: k.core.create_namespaced_config_map(ns, {"metadata": {"name": "x" * 254}})) == 422
    )
    k.core.create_namespaced_config_map(ns, {"metadata": {"name": "a.b-c"}})  # a subdomain is fine here


def test_label_values_are_at_most_63_valid_characters(kube_api, ns):
    """validation.go IsValidLabelValue: at most 63 characters, alphanumeric at both ends."""
    k = k8s(kube_api)
    too_long = {"metadata": {"name": "l1", "labels": {"klb.io/backup-id": "x" * 64}}}
    assert status_of(lambda: k.core.create_namespaced_config_map(ns, too_long)) == 422
    bad_end = {"metadata": {"name": "l2", "labels": {"a": "ends-"}}}
    assert status_of(lambda: k.core.create_namespaced_config_map(ns, bad_end)) == 422


def test_generate_name_keeps_58_characters_and_appends_5(kube_api, ns):
    """k8s.io/apiserver/pkg/storage/names/generate.go: maxGeneratedNameLength = 63 - 5."""
    k = k8s(kube_api)
    cm = k.core.create_namespaced_config_map(ns, {"metadata": {"generateName": "g" * 70}})
    assert len(cm.metadata.name) == 63 and cm.metadata.name.startswith("g" * 58)


def test_a_second_delete_of_a_terminating_namespace_is_409(kube_api, ns):
    """pkg/registry/core/namespace/storage/storage.go Delete: a namespace already being deleted
    whose finalizers have not run answers 409 Conflict ("The system is ensuring all content is
    removed from this namespace")."""
    k = k8s(kube_api)
    assert k.core.read_namespace(ns).spec.finalizers == ["kubernetes"]
    k.core.delete_namespace(ns)
    assert status_of(lambda: k.core.delete_namespace(ns)) == 409
    assert k.core.read_namespace(ns).status.phase == "Terminating"


def test_finalizers_hold_an_object_until_removed(kube_api, ns):
    """kubernetes.io/docs/concepts/overview/working-with-objects/finalizers/: delete only sets
    metadata.deletionTimestamp while finalizers remain; removing the last one removes the object."""
    k = k8s(kube_api)
    k.core.create_namespaced_config_map(
        ns, {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
    )
    k.core.delete_namespaced_config_map("held", ns)
    held = k.core.read_namespaced_config_map("held", ns)
    assert held.metadata.deletion_timestamp is not None
    k.core.patch_namespaced_config_map("held", ns, {"metadata": {"finalizers": None}})
    assert status_of(lambda: k.core.read_namespaced_config_map("held", ns)) == 404


def test_a_pvc_in_use_by_a_pod_is_not_removed(kube_api, ns):
    """pkg/controller/volume/pvcprotection: the kubernetes.io/pvc-protection finalizer stays
    while a pod uses the claim; the claim (and its Delete-policy PV, and data) go after."""
    ctl = kube_api.controller
    ctl.seed_pvc(ns, "data", content="x")
    ctl.seed_deployment(ns, "app", 1, pvcs=("data",))
    k = k8s(kube_api)
    k.core.delete_namespaced_persistent_volume_claim("data", ns)
    assert k.core.read_namespaced_persistent_volume_claim("data", ns).metadata.deletion_timestamp
    assert ctl.volumes[(ns, "data")] == "x"
    k.apps.patch_namespaced_deployment_scale("app", ns, {"spec": {"replicas": 0}})
    ctl.settle(lambda: ctl.store.find(PVCS, ns, "data") is None)
    assert (ns, "data") not in ctl.volumes
    assert status_of(lambda: k.core.read_persistent_volume(f"pv-{ns}-data")) == 404


def test_services_get_allocated_ips_and_node_ports_which_are_unique(kube_api, ns):
    """pkg/registry/core/service/ipallocator and portallocator: the server allocates clusterIP
    and nodePorts; asking for ones in use is 422 "provided port is already allocated"; a
    nodePort on a ClusterIP service is invalid (ValidateService)."""
    k = k8s(kube_api)
    svc = k.core.create_namespaced_service(
        ns, {"metadata": {"name": "a"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}}
    )
    assert svc.spec.cluster_ip and svc.spec.ports[0].node_port
    taken = {
        "metadata": {"name": "b"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": svc.spec.ports[0].node_port}]},
    }
    assert status_of(lambda: k.core.create_namespaced_service(ns, taken)) == 422
    same_ip = {"metadata": {"name": "c"}, "spec": {"clusterIP": svc.spec.cluster_ip, "ports": [{"port": 80}]}}
    assert status_of(lambda: k.core.create_namespaced_service(ns, same_ip)) == 422
    k.core.delete_namespaced_service("a", ns)
    k.core.create_namespaced_service(ns, taken)  # released: free again


def test_pvcs_bind_by_their_storage_class_binding_mode(kube_api, ns):
    """kubernetes.io/docs/concepts/storage/storage-classes/#volume-binding-mode: a claim is
    Pending when created; Immediate provisions and binds, WaitForFirstConsumer only once a pod
    uses it; a claim of an unknown class stays Pending."""
    ctl = kube_api.controller
    k = k8s(kube_api)

    def claim(name, cls):
        body = {
            "metadata": {"name": name},
            "spec": {
                "storageClassName": cls,
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
        return k.core.create_namespaced_persistent_volume_claim(ns, body)

    assert claim("now", "standard").status.phase == "Pending"
    claim("later", "local-wffc")
    claim("never", "no-such-class")
    phase = lambda name: k.core.read_namespaced_persistent_volume_claim(name, ns).status.phase  # noqa: E731
    ctl.settle(lambda: phase("now") == "Bound")
    assert phase("later") == "Pending" and phase("never") == "Pending"
    ctl.seed_deployment(ns, "consumer", 1, pvcs=("later",))
    assert phase("later") == "Bound" and phase("never") == "Pending"


def test_custom_resources_refuse_strategic_merge_patch(kube_api):
    """apiextensions-apiserver customresource_handler.go: custom resources accept JSON patch and
    merge patch, not strategic merge patch (415 UnsupportedMediaType); a JSON patch must be a list."""
    import json

    server = kube_api.server
    path = "/apis/velero.io/v1/namespaces/velero/backupstoragelocations/default"
    with pytest.raises(Exception) as info:
        server.dispatch(
            "PATCH", path, {"spec": {"default": False}}, "", "application/strategic-merge-patch+json"
        )
    assert info.value.code == 415
    with pytest.raises(Exception) as info:
        server.dispatch("PATCH", path, {"spec": {}}, "", "application/json-patch+json")
    assert info.value.code == 400
    code, body = server.dispatch(
        "PATCH", path, {"metadata": {"labels": {"a": "b"}}}, "", "application/merge-patch+json"
    )
    assert code == 200 and json.dumps(body["metadata"]["labels"]) == '{"a": "b"}'


def test_unknown_fields_of_velero_resources_are_pruned(kube_api, ns):
    """apiextensions "structural schema" pruning: Velero's CRDs (pkg/apis/velero/v1/
    backup_types.go) declare the fields; others are dropped. The Backup CRD has no status
    subresource, so status comes with the object (Velero's backup sync creates synced backups
    so, and `kubectl edit backup` extends status.expiration)."""
    k = k8s(kube_api)
    body = velero_cr("Backup", "pruned", {"includedNamespaces": [ns], "snapshotVolume": False})
    body["status"] = {"phase": "Completed"}
    created = k.custom.create_namespaced_custom_object("velero.io", "v1", "velero", "backups", body)
    assert "snapshotVolume" not in created["spec"] and created["spec"]["includedNamespaces"] == [ns]
    assert created["status"] == {"phase": "Completed"}


def test_unknown_fields_are_refused_under_strict_field_validation(kube_api, ns):
    """?fieldValidation=Strict (kubectl's default; apiserver/pkg/endpoints/handlers/create.go):
    an undeclared field is a 400 "strict decoding error: unknown field", not pruned; an older
    Velero's CRDs declare fewer fields (resourceModifier came with 1.12)."""
    k = k8s(kube_api)
    body = velero_cr("Restore", "strict", {"backupName": "b", "resourceModifer": {"name": "m"}})
    create = k.custom.create_namespaced_custom_object
    with pytest.raises(ApiException) as info:
        create("velero.io", "v1", "velero", "restores", body, field_validation="Strict")
    assert info.value.status == 400 and 'unknown field \\"spec.resourceModifer\\"' in info.value.body
    body["spec"] = {"backupName": "b", "resourceModifier": {"kind": "ConfigMap", "name": "m"}}
    assert create("velero.io", "v1", "velero", "restores", body, field_validation="Strict")["spec"]
    kube_api.controller.older_crds("restores", "resourceModifier")
    body["metadata"]["name"] = "older"
    strict = lambda: create("velero.io", "v1", "velero", "restores", body, field_validation="Strict")  # noqa: E731
    assert status_of(strict) == 400
    pruned = create("velero.io", "v1", "velero", "restores", body)  # Warn, the default: dropped
    assert "resourceModifier" not in pruned["spec"]


def test_deployments_run_pods_and_status_follows_them(kube_api, ns):
    """pkg/controller/deployment and replicaset: pods are created and removed asynchronously.
    A deleted pod is only marked (deletionTimestamp; pkg/registry/core/pod/strategy.go
    CheckGracefulDelete) and runs out its grace period; status.replicas counts "non-terminated
    pods" (apps/v1 DeploymentStatus), so it is 0 while they still run (a quiesce must wait for
    the pods themselves). The kubelet removes them once stopped."""
    ctl = kube_api.controller
    ctl.seed_deployment(ns, "web", 2)
    k = k8s(kube_api)
    assert len(k.core.list_namespaced_pod(ns, label_selector="app=web").items) == 2
    ctl.cluster.hold_termination = True  # a long terminationGracePeriodSeconds
    k.apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 0}})
    ctl.settle(lambda: k.apps.read_namespaced_deployment("web", ns).status.replicas == 0)
    terminating = k.core.list_namespaced_pod(ns, label_selector="app=web").items
    assert len(terminating) == 2 and all(p.metadata.deletion_timestamp for p in terminating)
    assert {p.metadata.deletion_grace_period_seconds for p in terminating} == {30}
    ctl.cluster.hold_termination = False
    ctl.settle(lambda: not k.core.list_namespaced_pod(ns, label_selector="app=web").items)


def test_emulator_state_is_reset_between_tests_part_one(kube_api, ns):
    """Everything a test leaves (objects, volume data, Velero backups, request logs) is gone for
    the next (the kube_api fixture resets the session's emulator)."""
    ctl = kube_api.controller
    ctl.volumes[("leak", "x")] = "left behind"
    ctl.secret_reads.append("/leak")
    ctl.snapshots["leak"] = object()
    ctl.seed_namespace("leak-check")


def test_emulator_state_is_reset_between_tests_part_two(kube_api):
    ctl = kube_api.controller
    assert ("leak", "x") not in ctl.volumes and "leak" not in ctl.snapshots
    assert ctl.secret_reads == [] and ctl.writes == []
    assert ctl.store.find(NAMESPACES, "", "leak-check") is None


def test_a_pods_spec_is_immutable_but_for_its_images(kube_api, ns):
    """pkg/apis/core/validation/validation.go ValidatePodUpdate: "pod updates may not change
    fields other than `spec.containers[*].image`, ..." (422); an image change is allowed."""
    kube_api.controller.seed_deployment(ns, "web", 1)
    k = k8s(kube_api)
    pod = k.core.list_namespaced_pod(ns, label_selector="app=web").items[0]
    name = pod.metadata.name
    patch = [{"op": "replace", "path": "/spec/containers/0/image", "value": "nginx:2"}]
    assert k.core.patch_namespaced_pod(name, ns, patch).spec.containers[0].image == "nginx:2"
    env = [{"op": "add", "path": "/spec/containers/0/env", "value": [{"name": "A", "value": "1"}]}]
    assert status_of(lambda: k.core.patch_namespaced_pod(name, ns, env)) == 422
    labels_ok = k.core.patch_namespaced_pod(name, ns, {"metadata": {"labels": {"x": "y"}}})
    assert labels_ok.metadata.labels["x"] == "y"  # metadata stays mutable


def test_a_pvc_spec_is_immutable_but_for_its_size(kube_api, ns):
    """ValidatePersistentVolumeClaimUpdate: "spec is immutable after creation except
    resources.requests ..." (422)."""
    kube_api.controller.seed_pvc(ns, "data", content="x")
    k = k8s(kube_api)
    grow = {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
    assert k.core.patch_namespaced_persistent_volume_claim("data", ns, grow)
    modes = {"spec": {"accessModes": ["ReadWriteMany"]}}
    assert status_of(lambda: k.core.patch_namespaced_persistent_volume_claim("data", ns, modes)) == 422


def test_service_cluster_ip_is_kept_when_empty_and_immutable_otherwise(kube_api, ns):
    """ValidateServiceUpdate ("field is immutable") and patchAllocatedValues in
    pkg/registry/core/service/storage/storage.go: an update without clusterIP/nodePort keeps them."""
    k = k8s(kube_api)
    spec = {"type": "NodePort", "ports": [{"port": 80}]}
    svc = k.core.create_namespaced_service(ns, {"metadata": {"name": "api"}, "spec": spec})
    ip, port = svc.spec.cluster_ip, svc.spec.ports[0].node_port
    body = {"metadata": {"name": "api", "labels": {"v": "2"}}, "spec": spec}
    again = k.core.replace_namespaced_service("api", ns, body)
    assert (again.spec.cluster_ip, again.spec.ports[0].node_port) == (ip, port)
    moved = {"metadata": {"name": "api"}, "spec": {**spec, "clusterIP": "10.96.200.200"}}
    assert status_of(lambda: k.core.replace_namespaced_service("api", ns, moved)) == 422


def test_deployment_selector_is_immutable(kube_api, ns):
    """apps/validation ValidateDeploymentUpdate (apps/v1): spec.selector is immutable (422)."""
    kube_api.controller.seed_deployment(ns, "web", 1)
    k = k8s(kube_api)
    dep = k.apps.read_namespaced_deployment("web", ns)
    dep.spec.selector.match_labels = {"app": "other"}
    dep.spec.template.metadata.labels = {"app": "other"}
    dep.metadata.resource_version = None  # no precondition: the controller writes status meanwhile
    assert status_of(lambda: k.apps.replace_namespaced_deployment("web", ns, dep)) == 422


def test_immutable_config_maps_and_secrets_refuse_changes(kube_api, ns):
    """ValidateConfigMapUpdate / ValidateSecretUpdate: with `immutable: true`, data and the flag
    itself are "field is immutable when `immutable` is set" (422)
    (kubernetes.io/docs/concepts/configuration/configmap/#configmap-immutable)."""
    k = k8s(kube_api)
    k.core.create_namespaced_config_map(
        ns, {"metadata": {"name": "frozen"}, "data": {"a": "1"}, "immutable": True}
    )
    change = {"data": {"a": "2"}}
    assert status_of(lambda: k.core.patch_namespaced_config_map("frozen", ns, change)) == 422
    thaw = {"immutable": False}
    assert status_of(lambda: k.core.patch_namespaced_config_map("frozen", ns, thaw)) == 422
    k.core.create_namespaced_secret(
        ns, {"metadata": {"name": "frozen"}, "data": {"a": "MQ=="}, "immutable": True}
    )
    assert status_of(lambda: k.core.patch_namespaced_secret("frozen", ns, {"data": {"a": "Mg=="}})) == 422
    labels = {"metadata": {"labels": {"x": "y"}}}
    assert k.core.patch_namespaced_config_map("frozen", ns, labels).metadata.labels == {"x": "y"}


def test_a_secret_s_type_defaults_to_opaque_and_never_changes_and_a_dry_run_keeps_nothing(kube_api, ns):
    """SetDefaults_Secret (type Opaque when empty, on every write) and ValidateSecretUpdate (type is
    immutable: an update without one asks for Opaque, 422); `?dryRun=All` answers as the write
    would, a refusal included, and keeps nothing
    (kubernetes.io/docs/reference/using-api/api-concepts/#dry-run)."""
    k = k8s(kube_api)
    writes = len(kube_api.controller.writes)
    made = k.core.create_namespaced_secret(ns, {"metadata": {"name": "s"}}, dry_run="All")
    assert made.type == "Opaque" and status_of(lambda: k.core.read_namespaced_secret("s", ns)) == 404
    k.core.create_namespaced_secret(ns, {"metadata": {"name": "s"}, "type": "example.com/x"})
    plain = {"metadata": {"name": "s"}, "data": {"a": "MQ=="}}
    assert status_of(lambda: k.core.replace_namespaced_secret("s", ns, plain, dry_run="All")) == 422
    assert status_of(lambda: k.core.replace_namespaced_secret("s", ns, plain)) == 422
    same = {**plain, "type": "example.com/x"}
    assert k.core.replace_namespaced_secret("s", ns, same, dry_run="All").data == {"a": "MQ=="}
    assert k.core.read_namespaced_secret("s", ns).data is None
    # the create and the refused replace: the dry runs write nothing
    assert [m for m, _ in kube_api.controller.writes[writes:]] == ["POST", "PUT"]


def test_pod_security_admission_enforces_the_namespace_level(kube_api):
    """The PodSecurity admission plugin (kubernetes.io/docs/concepts/security/pod-security-admission/,
    k8s.io/pod-security-admission/policy): a pod breaking the namespace's enforced level is 403
    `violates PodSecurity "restricted:latest"`; an unlabelled namespace admits it."""
    ctl = kube_api.controller
    ctl.seed_namespace("emu-restricted", {"pod-security.kubernetes.io/enforce": "restricted"})
    ctl.seed_namespace("emu-open")
    k = k8s(kube_api)
    loose = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    with pytest.raises(ApiException) as info:
        k.core.create_namespaced_pod("emu-restricted", loose)
    message = json.loads(info.value.body)["message"]
    assert info.value.status == 403 and 'violates PodSecurity "restricted:latest"' in message
    assert "capabilities.drop" in message and "seccompProfile" in message
    k.core.create_namespaced_pod("emu-open", loose)
    strict_sc = {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    strict = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": strict_sc}]},
    }
    k.core.create_namespaced_pod("emu-restricted", strict)


def test_forbidden_comes_before_not_found_and_scope_is_checked(kube_api, ns, tmp_path):
    """The apiserver authorizes a request (WithAuthorization, before the API handlers) from its
    RequestInfo alone: a caller RBAC does not allow gets 403 even for a resource type that is not
    served (or Velero's, when it is not installed); an allowed caller gets 404. A cluster-scoped
    resource under a namespace path is not served (404)."""
    from blocks.kubernetes import KubernetesTarget
    from tasks.components.kubernetes import api as kube

    kube_api.controller.seed("v1", "serviceaccounts", ns, {"metadata": {"name": "nobody"}})
    config = kube_api.service_account_kubeconfig(ns, "nobody", tmp_path / "nobody.kubeconfig")
    nobody, admin = kube.connect(KubernetesTarget(kubeconfig_path=str(config))), k8s(kube_api)

    def velero_get(k):
        return k.custom.get_namespaced_custom_object("velero.io", "v1", "velero", "backups", "b")

    def unknown_list(k):
        return k.custom.list_namespaced_custom_object("example.com", "v1", ns, "widgets")

    assert (status_of(lambda: unknown_list(nobody)), status_of(lambda: unknown_list(admin))) == (403, 404)
    kube_api.controller.installed = False
    assert (status_of(lambda: velero_get(nobody)), status_of(lambda: velero_get(admin))) == (403, 404)
    path = f"/api/v1/namespaces/{ns}/persistentvolumes"
    with pytest.raises(ApiError) as info:
        kube_api.server.dispatch("POST", path, {"metadata": {"name": "pv-in-ns"}, "spec": {}})
    assert info.value.code == 404 and kube_api.server.store.list(BY_PATH[("v1", "persistentvolumes")]) == []


def test_dependents_of_a_deleted_owner_are_garbage_collected(kube_api, ns):
    """pkg/controller/garbagecollector (background propagation, the default for a DELETE): the
    pods whose owner is gone are deleted too; a pod without an owner stays."""
    ctl = kube_api.controller
    ctl.seed_deployment(ns, "web", 2)
    ctl.seed("v1", "pods", ns, {"metadata": {"name": "lonely"}, "spec": {"containers": []}})
    k = k8s(kube_api)
    k.apps.delete_namespaced_deployment("web", ns)
    ctl.settle(lambda: not k.core.list_namespaced_pod(ns, label_selector="app=web").items)
    assert [p.metadata.name for p in k.core.list_namespaced_pod(ns).items] == ["lonely"]


def test_a_resource_version_in_a_patch_is_a_precondition(kube_api, ns):
    """A PATCH carrying metadata.resourceVersion is an optimistic-concurrency precondition, like
    an update (api-concepts: "resource versions"): stale -> 409 Conflict, nothing changed."""
    k = k8s(kube_api)
    cm = k.core.create_namespaced_config_map(ns, {"metadata": {"name": "rv"}, "data": {"a": "1"}})
    k.core.patch_namespaced_config_map("rv", ns, {"data": {"a": "2"}})
    stale = {"metadata": {"resourceVersion": cm.metadata.resource_version}, "data": {"a": "3"}}
    assert status_of(lambda: k.core.patch_namespaced_config_map("rv", ns, stale)) == 409
    assert k.core.read_namespaced_config_map("rv", ns).data == {"a": "2"}


def test_lists_come_in_chunks_with_limit_and_continue(kube_api, ns):
    """api-concepts "Retrieving large results sets in chunks": `limit` gives at most that many
    items, `metadata.continue` (and remainingItemCount) while more remain; the token resumes
    after the last one; a token that is not the server's is a 400. (The namespace also holds the
    cluster's kube-root-ca.crt, last by name.)"""
    k = k8s(kube_api)
    for name in ("c1", "c2", "c3"):
        k.core.create_namespaced_config_map(ns, {"metadata": {"name": name}})
    first = k.core.list_namespaced_config_map(ns, limit=2)
    assert [c.metadata.name for c in first.items] == ["c1", "c2"]
    assert first.metadata.remaining_item_count == 2 and first.metadata._continue
    rest = k.core.list_namespaced_config_map(ns, limit=2, _continue=first.metadata._continue)
    assert [c.metadata.name for c in rest.items] == ["c3", "kube-root-ca.crt"]
    assert rest.metadata._continue is None
    assert status_of(lambda: k.core.list_namespaced_config_map(ns, limit=2, _continue="bogus")) == 400


def test_a_new_namespace_gets_the_clusters_default_account_and_root_ca(kube_api, ns, tmp_path):
    """kube-controller-manager's serviceaccount controller and root-ca-cert-publisher
    (pkg/controller/serviceaccount, pkg/controller/certificates/rootcacertpublisher): every new
    namespace holds a ServiceAccount `default` and a ConfigMap `kube-root-ca.crt` (`ca.crt`, the
    cluster's CA), made by the system: a caller allowed to create namespaces and nothing else
    gets both, though it may neither create nor read them."""
    from blocks.kubernetes import KubernetesTarget
    from tasks.components.kubernetes import api as kube

    ctl, rbac = kube_api.controller, "rbac.authorization.k8s.io/v1"
    ctl.seed("v1", "serviceaccounts", ns, {"metadata": {"name": "maker"}})
    rule = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["create"]}
    ctl.seed(rbac, "clusterroles", "", {"metadata": {"name": f"{ns}-maker"}, "rules": [rule]})
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{ns}-maker"}
    subject = {"kind": "ServiceAccount", "name": "maker", "namespace": ns}
    binding = {"metadata": {"name": f"{ns}-maker"}, "roleRef": ref, "subjects": [subject]}
    ctl.seed(rbac, "clusterrolebindings", "", binding)
    config = kube_api.service_account_kubeconfig(ns, "maker", tmp_path / "maker.kubeconfig")
    maker, admin = kube.connect(KubernetesTarget(kubeconfig_path=str(config))), k8s(kube_api)
    fresh = f"{ns}-new"

    maker.core.create_namespace({"metadata": {"name": fresh}})

    assert [a.metadata.name for a in admin.core.list_namespaced_service_account(fresh).items] == ["default"]
    (root_ca,) = admin.core.list_namespaced_config_map(fresh).items
    assert root_ca.metadata.name == "kube-root-ca.crt"
    assert list(root_ca.data) == ["ca.crt"]
    assert root_ca.data["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")
    assert status_of(lambda: maker.core.list_namespaced_config_map(fresh)) == 403


CHANGES = {
    # a kind's own fields beside spec/data: what an ungrounded "nothing changed" check missed
    "binaryData": ("v1", "configmaps", {"binaryData": {"b": "AAE="}}, {"binaryData": {"b": "AgM="}}),
    "rules": (
        "rbac.authorization.k8s.io/v1",
        "roles",
        {"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
        {"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
    ),
    "finalizers": (
        "v1",
        "configmaps",
        {"metadata": {"finalizers": ["a/b"]}},
        {"metadata": {"finalizers": []}},
    ),
    "imagePullSecrets": ("v1", "serviceaccounts", {}, {"imagePullSecrets": [{"name": "registry"}]}),
}


@pytest.mark.parametrize("field", CHANGES)
def test_the_state_the_tests_compare_sees_every_field_of_an_object(kube_api, ns, field):
    """KubeAPI.state() is what restore tests call "the cluster is as it was": it held spec, data,
    labels and annotations only, so a Role whose rules changed, a ConfigMap's binaryData, a
    finalizer or a ServiceAccount's imagePullSecrets changed without a difference."""
    gv, plural, seeded, change = CHANGES[field]
    body = json.loads(json.dumps(seeded))
    body.setdefault("metadata", {})["name"] = "it"
    kube_api.controller.seed(gv, plural, ns, body)
    before = kube_api.state(ns)
    kube_api.server.store.patch(BY_PATH[(gv, plural)], ns, "it", change)
    assert kube_api.state(ns) != before


def test_the_state_the_tests_compare_tells_a_custom_kind_from_a_built_in_one_of_its_name(kube_api, ns):
    """Knative makes a core Service named after each Knative Service; state() keyed objects by
    plural, so one of the two hid the other: a restore that dropped the Knative Service left
    the compared state as it was."""
    from tests.k8s_helpers import install_knative_crd, seed_knative_service

    install_knative_crd(kube_api.controller)
    seed_knative_service(kube_api.controller, ns, "hello")
    kube_api.controller.seed(
        "v1", "services", ns, {"metadata": {"name": "hello"}, "spec": {"ports": [{"port": 80}]}}
    )
    before = kube_api.state(ns)
    from sandbox.k8s_emulator import crds

    knative = crds.by_path(kube_api.server.store)[("serving.knative.dev/v1", "services")]
    kube_api.server.store.delete(knative, ns, "hello")
    assert kube_api.state(ns) != before
