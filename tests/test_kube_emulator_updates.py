"""Updates and patches on the emulated API server behave as on a real one (sandbox/k8s_emulator/).

Each test names the real server's rule it pins; each failed against the emulator's more lenient
behaviour (any update without a resourceVersion taken, a create carrying one taken, strategic
merge patch as a JSON merge that replaces lists). Requests go through the real `kubernetes` client over HTTP.
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


def deployment(name: str) -> dict:
    labels = {"app": name}
    app = {
        "name": "app",
        "image": "ghcr.io/klb/app:v1",
        "args": ["--serve", "--port=8080"],
        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "1"}],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return {
        "metadata": {"name": name, "finalizers": ["klb.io/a"]},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [app, {"name": "sidecar", "image": "ghcr.io/klb/side:v1"}],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                    "tolerations": [{"key": "a", "operator": "Exists"}],
                },
            },
        },
    }


def test_a_strategic_merge_patch_merges_lists_by_their_merge_key(kube_api, ns):
    """k8s.io/api patchStrategy/patchMergeKey tags, applied by strategicpatch: containers, env,
    volumes by name, ports by containerPort, volumeMounts by mountPath are merged item by item
    (new ones appended, `$patch: delete` removes one), metadata.finalizers is unioned, and
    lists without a strategy (tolerations, args) are replaced. The client sends a dict body as
    a strategic merge patch to built-in kinds."""
    apps = k8s(kube_api).apps
    apps.create_namespaced_deployment(ns, deployment("web"))
    patch = {
        "metadata": {"finalizers": ["klb.io/b"]},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "env": [{"name": "B", "value": "2"}, {"name": "C", "value": "3"}],
                            "ports": [{"containerPort": 9090, "name": "metrics"}],
                            "args": ["--serve"],
                        },
                        {"name": "sidecar", "$patch": "delete"},
                        {"name": "proxy", "image": "ghcr.io/klb/proxy:v1"},
                    ],
                    "volumes": [{"name": "cache", "emptyDir": {}}],
                    "tolerations": [{"key": "b", "operator": "Exists"}],
                }
            }
        },
    }
    got = apps.patch_namespaced_deployment("web", ns, patch).to_dict()
    spec = got["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app", "proxy"]
    app = spec["containers"][0]
    assert app["image"] == "ghcr.io/klb/app:v1" and app["args"] == ["--serve"]
    assert [(e["name"], e["value"]) for e in app["env"]] == [("A", "1"), ("B", "2"), ("C", "3")]
    assert [p["container_port"] for p in app["ports"]] == [8080, 9090]
    assert [m["mount_path"] for m in app["volume_mounts"]] == ["/data"]
    assert [v["name"] for v in spec["volumes"]] == ["data", "tmp", "cache"]
    assert [t["key"] for t in spec["tolerations"]] == ["b"]
    assert got["metadata"]["finalizers"] == ["klb.io/a", "klb.io/b"]
    # a JSON merge patch replaces the list it names, whatever the kind
    merge = {"spec": {"template": {"spec": {"volumes": [{"name": "only", "emptyDir": {}}]}}}}
    got = apps.patch_namespaced_deployment(
        "web", ns, merge, _content_type="application/merge-patch+json"
    ).to_dict()
    assert [v["name"] for v in got["spec"]["template"]["spec"]["volumes"]] == ["only"]
    # a list item without its merge key is refused, nothing changed
    keyless = {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}
    before = apps.read_namespaced_deployment("web", ns).to_dict()
    assert refusal(lambda: apps.patch_namespaced_deployment("web", ns, keyless)).status >= 400
    after = apps.read_namespaced_deployment("web", ns).to_dict()
    # the spec and its generation, not the resourceVersion: the deployment controller may still
    # be writing the status for the merge patch above (asynchronously, as on a real cluster)
    assert (after["spec"], after["metadata"]["generation"]) == (
        before["spec"],
        before["metadata"]["generation"],
    )
    unfinal = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["klb.io/a"]}}
    apps.patch_namespaced_deployment("web", ns, unfinal)
    assert apps.read_namespaced_deployment("web", ns).metadata.finalizers == ["klb.io/b"]


def test_a_strategic_merge_patch_merges_service_ports_by_port(kube_api, ns):
    """ServiceSpec.Ports: patchMergeKey port. A port patched keeps its other fields; a new one
    is added beside the others."""
    core = k8s(kube_api).core
    http = {"name": "http", "port": 80, "targetPort": 8080}
    body = {"metadata": {"name": "api"}, "spec": {"ports": [http]}}
    core.create_namespaced_service(ns, body)
    patch = {"spec": {"ports": [{"port": 80, "targetPort": 8081}, {"name": "m", "port": 9090}]}}
    ports = core.patch_namespaced_service("api", ns, patch).spec.ports
    assert [(p.name, p.port) for p in ports] == [("http", 80), ("m", 9090)]
    assert ports[0].target_port == 8081


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
