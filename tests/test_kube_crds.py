"""The emulated API server serves CustomResourceDefinitions and, for each established one, its
custom resources as the apiextensions-apiserver does (sandbox/k8s_emulator/crds.py): generic
objects with uid, resourceVersion and generation, a cheap schema check and pruning, discovery,
RBAC by (group, resource), and a Knative Service never taken for a core Service."""

from __future__ import annotations

import copy
import json
import secrets

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox.k8s_emulator.store import BY_PATH
from tests.k8s_helpers import KNATIVE_SERVICE_CRD, install_knative_crd, k8s, seed_knative_service
from tests.test_kube_discovery import get, nobody

KN = ("serving.knative.dev", "v1")
CORE_LIST = {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}


def names(listed: dict) -> list[str]:
    return [i["metadata"]["name"] for i in listed["items"]]


def custom(kube_api) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s(kube_api).api)


def ksvc(name: str, image: str = "ghcr.io/klb/hello:v1") -> dict:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"image": image}]}}},
    }


def test_a_crd_is_established_and_listed_in_discovery(kube_api):
    k = k8s(kube_api)
    ext = client.ApiextensionsV1Api(k.api)
    groups = [g.name for g in client.ApisApi(k.api).get_api_versions().groups]
    assert "serving.knative.dev" not in groups and get(k, "/apis/serving.knative.dev/v1")[0] == 404
    ext.create_custom_resource_definition(KNATIVE_SERVICE_CRD)
    crd = ext.read_custom_resource_definition("services.serving.knative.dev")
    assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"
    assert crd.status.accepted_names.short_names == ["kservice", "ksvc"]
    groups = [g.name for g in client.ApisApi(k.api).get_api_versions().groups]
    # built-in groups first, then CRD groups by name
    order = [groups.index(g) for g in ("apiextensions.k8s.io", "serving.knative.dev", "velero.io")]
    assert order == sorted(order)
    status, doc = get(k, "/apis/serving.knative.dev/v1")
    found = {r["name"]: r for r in doc["resources"]}
    assert status == 200 and found["services"]["kind"] == "Service" and found["services"]["namespaced"]
    assert found["services"]["shortNames"] == ["kservice", "ksvc"] and "services/status" in found
    # the core Service keeps its place: 'services' and 'svc' are still core
    from sandbox.k8s_emulator import crds, discovery

    served = crds.served(kube_api.server.store)
    assert discovery.resolve("services", custom=served).group == ""
    assert discovery.resolve("ksvc", custom=served).group == "serving.knative.dev"
    assert discovery.resolve("services.serving.knative.dev", custom=served).custom


def test_custom_resources_are_generic_objects_with_the_servers_metadata(kube_api):
    install_knative_crd(kube_api.controller)
    ns = f"kn-{secrets.token_hex(3)}"
    kube_api.controller.seed_namespace(ns)
    api = custom(kube_api)
    made = api.create_namespaced_custom_object(*KN, ns, "services", ksvc("hello"))
    meta = made["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1
    assert made["apiVersion"] == "serving.knative.dev/v1" and made["kind"] == "Service"
    assert "status" not in made or not made.get("status", {}).get("clusterIP")
    # a core Service of the same name is another object: no clusterIP on the Knative one
    core_svc = {"metadata": {"name": "hello"}, "spec": {"ports": [{"port": 80}]}}
    k8s(kube_api).core.create_namespaced_service(ns, core_svc)
    assert "clusterIP" not in made["spec"]
    assert names(api.list_namespaced_custom_object(*KN, ns, "services")) == ["hello"]
    with pytest.raises(ApiException) as dup:
        api.create_namespaced_custom_object(*KN, ns, "services", ksvc("hello"))
    assert dup.value.status == 409
    # a label changes the resourceVersion, not the generation; a spec change both
    labelled = copy.deepcopy(made)
    labelled["metadata"]["labels"] = {"tier": "web"}
    after = api.replace_namespaced_custom_object(*KN, ns, "services", "hello", labelled)
    assert after["metadata"]["generation"] == 1
    assert after["metadata"]["resourceVersion"] != meta["resourceVersion"]
    after["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/klb/hello:v2"
    bumped = api.replace_namespaced_custom_object(*KN, ns, "services", "hello", after)
    assert bumped["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as stale:  # the old resourceVersion: a conflict
        api.replace_namespaced_custom_object(*KN, ns, "services", "hello", after)
    assert stale.value.status == 409
    label = {"metadata": {"labels": {"a": "b"}}}
    patched = api.patch_namespaced_custom_object(*KN, ns, "services", "hello", label)
    assert patched["metadata"]["labels"] == {"tier": "web", "a": "b"}
    api.delete_namespaced_custom_object(*KN, ns, "services", "hello")
    with pytest.raises(ApiException) as gone:
        api.get_namespaced_custom_object(*KN, ns, "services", "hello")
    assert gone.value.status == 404
    assert k8s(kube_api).core.read_namespaced_service("hello", ns).spec.cluster_ip


def test_the_schema_is_checked_and_unknown_fields_pruned_or_refused(kube_api):
    crd = copy.deepcopy(KNATIVE_SERVICE_CRD)
    crd["metadata"]["name"] = "widgets.example.com"
    crd["spec"].update(group="example.com", names={"kind": "Widget", "plural": "widgets"})
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {"size": {"type": "integer"}, "mode": {"type": "string", "enum": ["a", "b"]}},
            }
        },
    }
    client.ApiextensionsV1Api(k8s(kube_api).api).create_custom_resource_definition(crd)
    ns = f"kn-{secrets.token_hex(3)}"
    kube_api.controller.seed_namespace(ns)
    api = custom(kube_api)

    def make(spec: dict, name: str = "w", top: dict | None = None, **kw) -> dict:
        body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}
        body |= top or {}
        return api.create_namespaced_custom_object("example.com", "v1", ns, "widgets", body, **kw)

    for bad in ({"size": "big"}, {"mode": "a"}, {"size": 1, "mode": "c"}, {"size": True}):
        with pytest.raises(ApiException) as refused:
            make(bad)
        assert refused.value.status == 422, bad
    with pytest.raises(ApiException) as strict:
        make({"size": 1, "colour": "red"}, field_validation="Strict")
    assert strict.value.status == 400
    assert 'unknown field "spec.colour"' in json.loads(strict.value.body)["message"]
    made = make({"size": 1, "colour": "red"}, top={"extra": "x"})
    assert made["spec"] == {"size": 1} and "extra" not in made
    with pytest.raises(ApiException):
        api.list_namespaced_custom_object("example.com", "v1", ns, "gadgets")


def test_a_crd_that_is_not_valid_is_refused_and_a_deleted_one_takes_its_objects(kube_api):
    ext = client.ApiextensionsV1Api(k8s(kube_api).api)
    for change in (
        {"metadata": {"name": "svc.serving.knative.dev"}},
        {"spec": {"group": "knative"}},
        {"spec": {"scope": "Somewhere"}},
        {"spec": {"versions": []}},
    ):
        crd = copy.deepcopy(KNATIVE_SERVICE_CRD)
        for part, value in change.items():
            crd[part].update(value)
        with pytest.raises(ApiException) as refused:
            ext.create_custom_resource_definition(crd)
        assert refused.value.status == 422, change
    install_knative_crd(kube_api.controller)
    ns = f"kn-{secrets.token_hex(3)}"
    kube_api.controller.seed_namespace(ns)
    seed_knative_service(kube_api.controller, ns)
    crd = ext.read_custom_resource_definition("services.serving.knative.dev")
    crd.spec.scope = "Cluster"
    with pytest.raises(ApiException) as immutable:
        ext.replace_custom_resource_definition(crd.metadata.name, crd)
    assert immutable.value.status == 422
    ext.delete_custom_resource_definition("services.serving.knative.dev")
    assert not [k for k in kube_api.server.store.objects if k[0].custom]
    with pytest.raises(ApiException) as gone:
        custom(kube_api).list_namespaced_custom_object(*KN, ns, "services")
    assert gone.value.status == 404


def test_rbac_judges_custom_resources_by_group_and_resource(kube_api, tmp_path):
    """A Role on core `services` does not open Knative's `services`, and the reverse."""
    install_knative_crd(kube_api.controller)
    who, ns = nobody(kube_api, tmp_path)
    seed_knative_service(kube_api.controller, ns)
    ctl = kube_api.controller
    ctl.seed(
        "rbac.authorization.k8s.io/v1",
        "roles",
        ns,
        {"metadata": {"name": "r"}, "rules": [CORE_LIST]},
    )
    ctl.seed(
        "rbac.authorization.k8s.io/v1",
        "rolebindings",
        ns,
        {
            "metadata": {"name": "r"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": ns}],
        },
    )
    api = client.CustomObjectsApi(who.api)
    who.core.list_namespaced_service(ns)
    with pytest.raises(ApiException) as refused:
        api.list_namespaced_custom_object(*KN, ns, "services")
    assert refused.value.status == 403
    assert 'in API group "serving.knative.dev"' in json.loads(refused.value.body)["message"]
    role = {"apiGroups": ["serving.knative.dev"], "resources": ["services"], "verbs": ["list"]}
    roles = BY_PATH[("rbac.authorization.k8s.io/v1", "roles")]
    kube_api.server.store.patch(roles, ns, "r", {"rules": [role]})
    assert names(api.list_namespaced_custom_object(*KN, ns, "services")) == ["hello"]
    with pytest.raises(ApiException) as core:
        who.core.list_namespaced_service(ns)
    assert core.value.status == 403
    with pytest.raises(ApiException) as write:
        api.create_namespaced_custom_object(*KN, ns, "services", ksvc("other"))
    assert write.value.status == 403
