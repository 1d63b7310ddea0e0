"""The Kubernetes API client (tasks/components/kubernetes/api.py) against the emulator,
through the real `kubernetes` client."""

from __future__ import annotations

import secrets

import pytest
from pydantic import SecretStr, ValidationError

from blocks.kubernetes import KubernetesTarget
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes import quiesce
from tasks.errors import ConfigurationError, TransientError


@pytest.fixture
def apps(kube_api, ctl) -> str:
    """A namespace with deployments at 2, 5 and 1 replicas."""
    ns = "apps-" + secrets.token_hex(3)
    ctl.seed_namespace(ns)
    for name, replicas in (("api", 2), ("worker", 5), ("cron", 1)):
        ctl.seed_deployment(ns, name, replicas)
    return ns


def replicas(kube_api, ns: str) -> dict[str, int]:
    k = kube.connect(kube_api.target())
    return {d.metadata.name: d.spec.replicas for d in kube.list_deployments(k, ns)}


def test_quiesce_records_counts_and_unquiesce_puts_back_exactly_those(kube_api, apps):
    counts = quiesce.quiesce(kube_api.target(), apps)
    assert counts == {"api": 2, "worker": 5, "cron": 1}
    assert replicas(kube_api, apps) == {"api": 0, "worker": 0, "cron": 0}
    quiesce.unquiesce(kube_api.target(), apps, counts)
    assert replicas(kube_api, apps) == {"api": 2, "worker": 5, "cron": 1}
    k = kube.connect(kube_api.target())
    assert all(
        quiesce.QUIESCED_ANNOTATION not in (d.metadata.annotations or {})
        for d in kube.list_deployments(k, apps)
    )


def test_quiesce_waits_until_the_pods_are_gone_not_only_status_replicas(kube_api, apps, ctl):
    """status.replicas drops to 0 as soon as the pods are terminating (apps/v1 DeploymentStatus:
    "non-terminated pods"), while they still run out their grace period and may write: quiesced
    means no pod of the deployments is left. Pods that never stop: a timeout, counts put back."""
    k = kube.connect(kube_api.target())
    ctl.cluster.hold_termination = True
    with pytest.raises(TransientError, match="terminating pods included"):
        quiesce.quiesce(kube_api.target(), apps, timeout=1)
    assert replicas(kube_api, apps) == {"api": 2, "worker": 5, "cron": 1}
    ctl.cluster.hold_termination = False
    assert quiesce.quiesce(kube_api.target(), apps) == {"api": 2, "worker": 5, "cron": 1}
    assert k.core.list_namespaced_pod(apps).items == []


def test_quiesced_puts_counts_back_when_the_work_inside_fails(kube_api, apps):
    with (
        pytest.raises(RuntimeError, match="restore failed"),
        quiesce.quiesced(kube_api.target(), apps) as counts,
    ):
        assert replicas(kube_api, apps) == {"api": 0, "worker": 0, "cron": 0}
        raise RuntimeError("restore failed")
    assert counts == {"api": 2, "worker": 5, "cron": 1}
    assert replicas(kube_api, apps) == {"api": 2, "worker": 5, "cron": 1}


def test_a_second_quiesce_after_a_crash_still_knows_the_real_counts(kube_api, apps):
    quiesce.quiesce(kube_api.target(), apps)  # the run that crashed before unquiesce
    assert quiesce.quiesce(kube_api.target(), apps) == {"api": 2, "worker": 5, "cron": 1}


def test_quiesce_forbidden_by_rbac_says_which_permission_and_changes_nothing(kube_api, apps, ctl):
    before = kube_api.state(apps)
    ctl.deny("patch", "deployments")
    with pytest.raises(ConfigurationError, match=r'forbidden by RBAC.*cannot patch resource "deployments"'):
        quiesce.quiesce(kube_api.target(), apps)
    assert kube_api.state(apps) == before


def test_scale_forbidden_keeps_the_replica_counts(kube_api, apps, ctl):
    ctl.deny("patch", "deployments/scale")
    with pytest.raises(ConfigurationError, match='"deployments/scale"'):
        quiesce.quiesce(kube_api.target(), apps)
    assert replicas(kube_api, apps) == {"api": 2, "worker": 5, "cron": 1}


def test_kubeconfig_contents_as_a_secret_and_a_named_context(kube_api):
    text = kube_api.kubeconfig_path.read_text()
    target = KubernetesTarget(kubeconfig=SecretStr(text), context="emulator")
    assert "velero" in kube.list_namespaces(kube.connect(target))
    assert "emulator-token" not in repr(target)


def test_unknown_context_and_unreadable_kubeconfig_are_configuration_errors(kube_api, tmp_path):
    with pytest.raises(ConfigurationError, match="cannot load Kubernetes credentials"):
        kube.connect(KubernetesTarget(kubeconfig_path=str(kube_api.kubeconfig_path), context="nope"))
    with pytest.raises(ConfigurationError, match="cannot load Kubernetes credentials"):
        kube.connect(KubernetesTarget(kubeconfig_path=str(tmp_path / "missing")))


def test_in_cluster_without_a_service_account_is_a_configuration_error(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigurationError, match="in-cluster"):
        kube.connect(KubernetesTarget(in_cluster=True))


def test_two_credential_sources_are_refused():
    with pytest.raises(ValidationError, match="choose one"):
        KubernetesTarget(in_cluster=True, kubeconfig_path="/x")


def test_an_unreachable_api_server_is_a_configuration_error(tmp_path):
    from sandbox.k8s_emulator import write_kubeconfig
    from sandbox.services import free_port

    path = write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{free_port()}")
    k = kube.connect(KubernetesTarget(kubeconfig_path=str(path), request_timeout_seconds=2))
    k.api.configuration.retries = 0
    with pytest.raises(ConfigurationError, match="cannot reach the Kubernetes API"):
        kube.list_namespaces(k)


def test_list_pvcs_and_delete_namespace(kube_api, ctl):
    ns = "pv-" + secrets.token_hex(3)
    ctl.seed_namespace(ns)
    ctl.seed_pvc(ns, "data", content="x")
    k = kube.connect(kube_api.target())
    assert kube.list_pvcs(k, ns) == [
        {
            "namespace": ns,
            "name": "data",
            "phase": "Bound",
            "storage_class": "standard",
            "capacity": "1Gi",
            "volume": f"pv-{ns}-data",
        }
    ]
    kube.delete_namespace(k, ns, interval=0.01)
    assert not kube.namespace_exists(k, ns)
    kube.delete_namespace(k, ns)  # already gone: fine


def test_a_terminating_namespace_is_waited_for_and_not_mistaken_for_rbac(kube_api, ctl):
    from tasks.errors import TransientError

    ns = "term-" + secrets.token_hex(3)
    ctl.seed_namespace(ns)
    k = kube.connect(kube_api.target())
    k.core.delete_namespace(ns)  # a bare delete: the namespace terminates for a while
    with pytest.raises(TransientError, match="being terminated"):
        k.call("create configmap", k.core.create_namespaced_config_map, ns, {"metadata": {"name": "x"}})
    kube.delete_namespace(k, ns, interval=0.02)  # waits until it is gone
    assert not kube.namespace_exists(k, ns)
    kube.create_namespace(k, ns)
    assert kube.namespace_exists(k, ns)
