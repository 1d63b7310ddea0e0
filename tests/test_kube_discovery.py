"""The emulated API server serves discovery as the real one does, allows it to every
authenticated user through the bootstrap ClusterRole system:discovery, and its Velero resolves
resource names through it (and ignores what it cannot resolve), as Velero's discovery helper
does (pkg/util/collections/includes_excludes.go GetResourceIncludesExcludes)."""

from __future__ import annotations

import json
import secrets

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox.k8s_emulator.snapshot import CONFIGMAPS, SERVICES
from sandbox.k8s_emulator.store import BY_PATH
from tests.k8s_helpers import k8s, seed_app
from tests.test_velero_emulator import backup, restore

RBAC = "rbac.authorization.k8s.io/v1"
SECRETS = BY_PATH[("v1", "secrets")]


def get(k, path: str, method: str = "GET") -> tuple[int, dict]:
    """(status, body) of a raw request to `path`, authenticated as `k`'s user."""
    verb, url, headers, body, post = k.api.param_serialize(method, path, auth_settings=["BearerToken"])
    resp = k.api.call_api(verb, url, header_params=headers, body=body, post_params=post)
    resp.read()
    return resp.status, json.loads(resp.data)


def nobody(kube_api, tmp_path):
    """A client for a ServiceAccount no Role is bound to."""
    from blocks.kubernetes import KubernetesTarget
    from tasks.components.kubernetes import api as kube

    ns = f"who-{secrets.token_hex(3)}"
    kube_api.controller.seed_namespace(ns)
    kube_api.controller.seed("v1", "serviceaccounts", ns, {"metadata": {"name": "nobody"}})
    config = kube_api.service_account_kubeconfig(ns, "nobody", tmp_path / "nobody.kubeconfig")
    return kube.connect(KubernetesTarget(kubeconfig_path=str(config))), ns


def test_discovery_is_served_like_the_real_api_server(kube_api):
    """/api, /api/v1, /apis, /apis/<group>, /apis/<group>/<version>, through the official
    client's own discovery calls (with their trailing slash): plurals, singulars, kinds, short
    names, scope, subresources; Velero's group only while it is installed."""
    k = k8s(kube_api)
    assert client.CoreApi(k.api).get_api_versions().versions == ["v1"]
    core = {r.name: r for r in k.core.get_api_resources().resources}
    assert core["services"].short_names == ["svc"] and core["services"].kind == "Service"
    assert core["configmaps"].singular_name == "configmap" and core["configmaps"].namespaced
    assert not core["namespaces"].namespaced and core["persistentvolumeclaims"].short_names == ["pvc"]
    assert "secrets" in core and not core["secrets"].short_names
    apps = {r.name: r for r in k.apps.get_api_resources().resources}
    assert apps["deployments"].short_names == ["deploy"] and "deployments/scale" in apps
    groups = [g.name for g in client.ApisApi(k.api).get_api_versions().groups]
    assert groups[0] == "apps" and "velero.io" in groups and "rbac.authorization.k8s.io" in groups
    status, velero = get(k, "/apis/velero.io/v1")
    assert status == 200 and {"backups", "restores"} <= {r["name"] for r in velero["resources"]}
    kube_api.controller.installed = False
    assert "velero.io" not in [g.name for g in client.ApisApi(k.api).get_api_versions().groups]
    assert get(k, "/apis/velero.io/v1")[0] == 404 and get(k, "/apis/velero.io")[0] == 404


def test_discovery_is_allowed_to_every_authenticated_user_by_system_discovery(kube_api, tmp_path):
    """bootstrappolicy: ClusterRole system:discovery (get on /api, /api/*, /apis, /apis/*, ...)
    bound to the group system:authenticated. An account with no Role reads discovery and nothing
    else; without that binding discovery is forbidden too, and a write to it is never allowed."""
    who, ns = nobody(kube_api, tmp_path)
    assert "configmaps" in {r.name for r in who.core.get_api_resources().resources}
    assert client.ApisApi(who.api).get_api_versions().groups
    with pytest.raises(ApiException) as refused:
        who.core.list_namespaced_config_map(ns)
    assert refused.value.status == 403
    status, posted = get(who, "/apis", "POST")
    assert status == 403 and 'cannot post path "/apis"' in posted["message"]
    bindings = BY_PATH[(RBAC, "clusterrolebindings")]
    kube_api.server.store.delete(bindings, "", "system:discovery")
    with pytest.raises(ApiException) as forbidden:
        who.core.get_api_resources()
    message = json.loads(forbidden.value.body)["message"]
    assert forbidden.value.status == 403 and 'cannot get path "/api/v1/"' in message


@pytest.mark.parametrize(
    ("excluded", "secrets_restored"),
    [
        (["Secret"], False),
        (["secret"], False),
        (["secrets"], False),
        (["secrets.v1"], True),  # not a group: Velero cannot resolve it and excludes nothing
        (["secretz"], True),  # a typo: Velero logs it and excludes nothing
    ],
)
def test_velero_resolves_resource_names_through_discovery(kube_api, excluded, secrets_restored):
    """helper.ResourceFor: a kind, singular, plural or short name (and `plural.group`) resolves;
    a name that does not is kept as it is and matches nothing."""
    ns = f"res-{secrets.token_hex(3)}"
    seed_app(kube_api.controller, ns)
    name, _ = backup(kube_api, ns)
    kube_api.controller.store.delete(BY_PATH[("v1", "namespaces")], "", ns)
    kube_api.controller.settle(
        lambda: kube_api.controller.store.find(BY_PATH[("v1", "namespaces")], "", ns) is None
    )

    _, done = restore(kube_api, name, excludedResources=excluded, includedResources=["cm", "Secret", "svc"])

    assert done["status"]["phase"] == "Completed"
    store = kube_api.controller.store
    assert (store.find(SECRETS, ns, "db-password") is not None) is secrets_restored
    assert store.find(CONFIGMAPS, ns, "flags") is not None and store.find(SERVICES, ns, "api") is not None
