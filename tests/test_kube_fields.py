"""Field selectors on list, as the API server serves them (sandbox/k8s_emulator/fields.py). The
emulator honoured `metadata.name=` alone and ignored any other selector, answering with every
object: code filtering on spec.nodeName or status.phase would have passed its tests against
answers no cluster gives."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from sandbox.k8s_emulator.snapshot import PODS
from tests.k8s_helpers import k8s


def seed_pod(ctl, ns: str, name: str, node: str, phase: str) -> None:
    spec = {"nodeName": node, "containers": [{"name": "c", "image": "registry.local/c:1"}]}
    ctl.seed("v1", "pods", ns, {"metadata": {"name": name}, "spec": spec})
    ctl.store.patch(PODS, ns, name, {"status": {"phase": phase}}, True)


@pytest.fixture
def pods(kube_api, ctl) -> tuple[str, str]:
    for ns in ("fields-a", "fields-b"):
        ctl.seed_namespace(ns)
    seed_pod(ctl, "fields-a", "one", "node-1", "Succeeded")
    seed_pod(ctl, "fields-a", "two", "node-2", "Failed")
    seed_pod(ctl, "fields-b", "three", "node-1", "Succeeded")
    return "fields-a", "fields-b"


def names(listed) -> list[str]:
    return sorted(i.metadata.name for i in listed.items)


def test_pods_are_selected_by_node_phase_name_and_namespace(kube_api, pods):
    k = k8s(kube_api)
    a, b = pods
    assert names(k.core.list_namespaced_pod(a, field_selector="spec.nodeName=node-1")) == ["one"]
    assert names(k.core.list_pod_for_all_namespaces(field_selector="spec.nodeName==node-1")) == [
        "one",
        "three",
    ]
    assert names(k.core.list_namespaced_pod(a, field_selector="status.phase!=Succeeded")) == ["two"]
    both = "spec.nodeName=node-1,metadata.namespace=" + b
    assert names(k.core.list_pod_for_all_namespaces(field_selector=both)) == ["three"]
    assert names(k.core.list_namespaced_pod(a, field_selector="metadata.name=two")) == ["two"]


def test_secrets_by_type_and_namespaces_by_phase(kube_api, ctl, pods):
    k = k8s(kube_api)
    a, _ = pods
    ctl.seed("v1", "secrets", a, {"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": {}})
    ctl.seed("v1", "secrets", a, {"metadata": {"name": "plain"}, "data": {}})
    assert names(k.core.list_namespaced_secret(a, field_selector="type=kubernetes.io/tls")) == ["tls"]
    active = names(k.core.list_namespace(field_selector="status.phase=Active"))
    assert {"fields-a", "fields-b"} <= set(active)


@pytest.mark.parametrize(
    "call, selector",
    [
        ("list_namespaced_pod", "spec.nodename=node-1"),  # field names are case-sensitive
        ("list_namespaced_config_map", "data.mode=prod"),
        ("list_namespaced_secret", "status.phase=Active"),
        ("list_namespaced_pod", "spec.nodeName"),  # no operator
    ],
)
def test_a_field_the_resource_does_not_serve_is_a_400_not_ignored(kube_api, pods, call, selector):
    with pytest.raises(ApiException) as refused:
        getattr(k8s(kube_api).core, call)(pods[0], field_selector=selector)
    assert refused.value.status == 400
