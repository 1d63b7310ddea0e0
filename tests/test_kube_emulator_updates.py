"""Updates and patches on the emulated API server behave as on a real one (sandbox/k8s_emulator/).

Each test names the real server's rule it pins; each failed against the emulator's more lenient
behaviour (any update without a resourceVersion taken, a create carrying one taken). Requests go
through the real `kubernetes` client over HTTP.
"""

from __future__ import annotations

import copy
import secrets

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s_helpers import install_knative_crd, k8s, seed_knative_service

KN = ("serving.knative.dev", "v1")


@pytest.fixture
def ns(kube_api) -> str:
    name = "upd-" + secrets.token_hex(3)
    kube_api.controller.seed_namespace(name)
    return name


def refusal(call) -> ApiException:
    with pytest.raises(ApiException) as info:
        call()
    return info.value


def test_an_update_of_a_custom_resource_needs_its_resource_version(kube_api, ns):
    """customresource/strategy.go and customresourcedefinition/strategy.go:
    AllowUnconditionalUpdate() is false, so the generic store refuses an update (PUT) without
    metadata.resourceVersion: 422 "must be specified for an update", nothing changed. Velero's
    own kinds are custom resources too. A ConfigMap (AllowUnconditionalUpdate true) takes one."""
    install_knative_crd(kube_api.controller)
    seed_knative_service(kube_api.controller, ns)
    api = client.CustomObjectsApi(k8s(kube_api).api)
    current = api.get_namespaced_custom_object(*KN, ns, "services", "hello")
    blind = copy.deepcopy(current)
    del blind["metadata"]["resourceVersion"]
    blind["metadata"]["labels"] = {"tier": "web"}
    exc = refusal(lambda: api.replace_namespaced_custom_object(*KN, ns, "services", "hello", blind))
    assert exc.status == 422 and "must be specified for an update" in exc.body
    assert api.get_namespaced_custom_object(*KN, ns, "services", "hello") == current
    exc = refusal(lambda: api.replace_namespaced_custom_object(*KN, ns, "services", "nope", blind))
    assert exc.status == 404  # the object is looked up first
    # with the resourceVersion it is an update; a merge patch never needs one
    blind["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    api.replace_namespaced_custom_object(*KN, ns, "services", "hello", blind)
    api.patch_namespaced_custom_object(*KN, ns, "services", "hello", {"metadata": {"labels": {"a": "b"}}})

    bsl = api.get_namespaced_custom_object("velero.io", "v1", "velero", "backupstoragelocations", "default")
    del bsl["metadata"]["resourceVersion"]
    exc = refusal(
        lambda: api.replace_namespaced_custom_object(
            "velero.io", "v1", "velero", "backupstoragelocations", "default", bsl
        )
    )
    assert exc.status == 422 and "must be specified for an update" in exc.body

    ext = client.ApiextensionsV1Api(k8s(kube_api).api)
    crd = ext.read_custom_resource_definition("services.serving.knative.dev")
    crd.metadata.resource_version = None
    exc = refusal(lambda: ext.replace_custom_resource_definition(crd.metadata.name, crd))
    assert exc.status == 422 and "must be specified for an update" in exc.body

    core = k8s(kube_api).core
    core.create_namespaced_config_map(ns, {"metadata": {"name": "c"}, "data": {"a": "1"}})
    done = core.replace_namespaced_config_map("c", ns, {"metadata": {"name": "c"}, "data": {"a": "2"}})
    assert done.data == {"a": "2"}


def test_a_create_carrying_a_resource_version_is_refused(kube_api, ns):
    """storage/etcd3/store.go Create: "resourceVersion should not be set on objects to be
    created" (a 500; kubernetes/kubernetes#62836 kept it so, to catch objects sourced from a
    read). An object read back and created again must drop it; the emulator dropped it."""
    core = k8s(kube_api).core
    made = core.create_namespaced_config_map(ns, {"metadata": {"name": "a"}, "data": {"k": "v"}})
    again = {"metadata": {"name": "b", "resourceVersion": made.metadata.resource_version}}
    exc = refusal(lambda: core.create_namespaced_config_map(ns, again))
    assert exc.status == 500 and "should not be set on objects to be created" in exc.body
    assert refusal(lambda: core.read_namespaced_config_map("b", ns)).status == 404
