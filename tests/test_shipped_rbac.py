"""Every flow that touches Kubernetes runs under exactly the shipped deployments/k8s/rbac.yaml.

Each test starts its own emulated API server, applies namespace.yaml and rbac.yaml through the API
(as `kubectl apply` would), and runs the flows with a kubeconfig that authenticates as the
ServiceAccount the flow-run pods use; the emulator refuses whatever RBAC does not grant. The
audit of which rule granted each request shows every rule is used, and removing any one rule
makes a flow fail with the project's "forbidden by RBAC" error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from sandbox.k8s_emulator import KubeAPI, start_kube_api
from tasks.errors import ComponentFailed, ConfigurationError
from tests import deployspec as spec

K8S = spec.ROOT / "deployments" / "k8s"
SHIPPED = [d for d in yaml.safe_load_all((K8S / "rbac.yaml").read_text()) if d]
NAMESPACE = [d for d in yaml.safe_load_all((K8S / "namespace.yaml").read_text()) if d]
(ACCOUNT,) = [d["metadata"] for d in SHIPPED if d["kind"] == "ServiceAccount"]
# the application namespaces the shipped RBAC names (RoleBindings outside klb-system and velero)
APP_NAMESPACES = sorted(
    {
        d["metadata"]["namespace"]
        for d in SHIPPED
        if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] not in ("klb-system", "velero")
    }
)


@dataclass
class Cluster:
    api: KubeAPI
    kubeconfig: Path

    def velero_target(self, **kwargs):
        from blocks.kubernetes import KubernetesTarget, VeleroTarget

        kwargs.setdefault("poll_interval_seconds", 0.02)
        kwargs.setdefault("backup_timeout_seconds", 10)
        kwargs.setdefault("restore_timeout_seconds", 10)
        kwargs.setdefault("include_namespaces", APP_NAMESPACES)
        return VeleroTarget(kube=KubernetesTarget(kubeconfig_path=str(self.kubeconfig)), **kwargs)


def start_cluster(workdir: Path, rbac: list[dict]) -> Cluster:
    """An emulated cluster with the apps (each with a Knative Service: the platform's workload, a
    custom resource), Velero, and `rbac` applied; a flow-runner kubeconfig."""
    from tests.k8s_helpers import install_knative_crd, seed_app, seed_knative_service

    api = start_kube_api(workdir)
    install_knative_crd(api.controller)
    for ns in APP_NAMESPACES:
        seed_app(api.controller, ns)
        seed_knative_service(api.controller, ns)
    api.apply(NAMESPACE + rbac)
    kubeconfig = api.service_account_kubeconfig(
        ACCOUNT["namespace"], ACCOUNT["name"], workdir / "flow-runner.kubeconfig"
    )
    return Cluster(api, kubeconfig)


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    c = start_cluster(tmp_path / "cluster", SHIPPED)
    yield c
    c.api.server.stop()


# ---- the flows ----------------------------------------------------------------------------------


def backup_and_restore_kubernetes(c: Cluster, store) -> None:
    from flows.backup import backup_component
    from flows.restore import restore_component
    from tasks.components.kubernetes import api as kube

    target = c.velero_target()
    result = backup_component("kubernetes", target=target, store=store)
    ns = APP_NAMESPACES[0]
    before = c.api.state(ns)
    kube.delete_namespace(kube.connect(c.api.target()), ns, interval=0.01)  # an admin's mistake
    restore_component("kubernetes", result.id, target=target, store=store, options={"namespaces": [ns]})
    assert set(c.api.state(ns)["objects"]) == set(before["objects"]), set(before["objects"]) ^ set(
        c.api.state(ns)["objects"]
    )


def backup_and_restore_volumes(c: Cluster, store) -> None:
    from flows.backup import backup_component
    from flows.restore import restore_component

    target = c.velero_target()
    result = backup_component("volumes", target=target, store=store)
    ns = APP_NAMESPACES[0]
    c.api.controller.volumes[(ns, "data")] = "corrupted"
    restore_component("volumes", result.id, target=target, store=store, options={"namespaces": [ns]})


def drill(c: Cluster, store) -> None:
    from flows.backup import backup_component
    from flows.drill import restore_drill
    from tasks.operations.drills import Status

    targets = {"kubernetes": c.velero_target(), "volumes": c.velero_target()}
    for name, target in targets.items():
        backup_component(name, target=target, store=store)
    record = restore_drill(components=list(targets), targets=targets, store=store)
    assert {d.component: d.status for d in record.components} == dict.fromkeys(targets, Status.verified)


def namespace_corruption(c: Cluster, store) -> None:
    from flows.backup import backup_component
    from flows.scenarios import namespace_corruption

    target = c.velero_target()
    backup_component("kubernetes", target=target, store=store)
    namespace_corruption(APP_NAMESPACES[0], target=target, store=store)


def data_corruption(c: Cluster, store) -> None:
    from flows.backup import backup_component
    from flows.scenarios import data_corruption

    # file-system backup: the data comes back through helper pods, which the restore then deletes
    target = c.velero_target(default_volumes_to_fs_backup=True)
    backup_component("volumes", target=target, store=store)
    c.api.controller.volumes[(APP_NAMESPACES[0], "data")] = "corrupted"
    data_corruption(APP_NAMESPACES[0], target=target, store=store)
    assert c.api.controller.volumes[(APP_NAMESPACES[0], "data")] == f"{APP_NAMESPACES[0]} volume v1"


def partial_restore(c: Cluster, store) -> None:
    from flows.backup import backup_component
    from flows.scenarios import partial_restore

    target = c.velero_target()
    result = backup_component("kubernetes", target=target, store=store)
    ns = APP_NAMESPACES[0]
    store_ = c.api.server.store
    for plural, name in [("configmaps", "flags"), ("secrets", "db-password")]:  # changed: replaced
        store_.patch(_res("v1", plural), ns, name, {"data": {"broken": "eHg="}})
    store_.delete(_res("apps/v1", "deployments"), ns, "cron")  # deleted: created
    report = partial_restore(
        result.id,
        [ns],
        resources=["configmaps", "secrets", "services", "deployments"],
        names=["flags", "db-password", "cron", "api"],
        existing_resource_policy="update",
        store=store,
        target=target,
    )
    assert len(report["restored_objects"]) == 5
    assert "broken" not in c.api.server.store.get(_res("v1", "configmaps"), ns, "flags")["data"]


def checklist_restore_and_rollback(c: Cluster, store) -> None:
    """A checklist restore that overwrites (its safety backup first), then its rollback (its own
    safety backup, then the first one put back)."""
    from flows.backup import backup_component
    from flows.recovery import restore_with_checklist, rollback_restore

    target = c.velero_target()
    backup_component("kubernetes", target=target, store=store)
    ns = APP_NAMESPACES[0]
    store_ = c.api.server.store
    store_.patch(_res("v1", "configmaps"), ns, "settings", {"data": {"mode": "broken"}})
    options = {"namespaces": [ns], "existing_resource_policy": "update"}
    record = restore_with_checklist("kubernetes", target=target, store=store, options=options)
    assert store_.get(_res("v1", "configmaps"), ns, "settings")["data"] == {"mode": "prod"}
    rolled = rollback_restore(record.id, target=target, store=store)
    assert rolled.status == "rolled back"
    assert store_.get(_res("v1", "configmaps"), ns, "settings")["data"] == {"mode": "broken"}


def stuck_backup_is_cancelled(c: Cluster, store) -> None:
    from flows.backup import backup_component

    c.api.controller.backup_outcome = "stuck"
    target = c.velero_target(backup_timeout_seconds=0.3)
    with pytest.raises(ComponentFailed) as failed:
        backup_component("kubernetes", target=target, store=store)
    assert "forbidden" not in str(failed.value) and "still in progress" in str(failed.value)


def pitr_kubernetes(c: Cluster, store) -> None:
    from flows.backup import backup_component
    from flows.pitr import pitr_kubernetes

    target = c.velero_target()
    backup_component("kubernetes", target=target, store=store)
    pitr_kubernetes(
        datetime.now(UTC), target=target, store=store, options={"existing_resource_policy": "update"}
    )


def full_cluster_restore(c: Cluster, store) -> None:
    from flows.backup import backup_all
    from flows.scenarios import full_cluster_restore

    targets = {"kubernetes": c.velero_target(), "volumes": c.velero_target()}
    backup_all(targets=targets, store=store)
    done = full_cluster_restore(targets=targets, store=store, dry_run=False)
    assert not done["dry_run"]


def retention_holds_velero_expiry(c: Cluster, store) -> None:
    from flows.backup import backup_component
    from flows.maintenance import enforce_retention

    target = c.velero_target()
    backup_component("kubernetes", target=target, store=store)
    done = enforce_retention(
        dry_run=False, store=store, components=["kubernetes"], targets={"kubernetes": target}
    )
    assert done["components"]["kubernetes"]["engine_hold"]


def _res(gv: str, plural: str):
    from sandbox.k8s_emulator.store import BY_PATH

    return BY_PATH[(gv, plural)]


FLOWS: dict[str, Callable[[Cluster, object], None]] = {
    f.__name__: f
    for f in (
        backup_and_restore_kubernetes,
        backup_and_restore_volumes,
        drill,
        namespace_corruption,
        data_corruption,
        partial_restore,
        checklist_restore_and_rollback,
        pitr_kubernetes,
        full_cluster_restore,
        stuck_backup_is_cancelled,
        retention_holds_velero_expiry,
    )
}


# ---- the tests ------------------------------------------------------------------------------------

RuleKey = tuple[str, str, str, int]  # (Role|ClusterRole, namespace of a Role, name, index of the rule)
AUDIT: dict[str, list[tuple[RuleKey, str, str, str]]] = {}  # flow -> what each request was granted by


def run_flow(flow: str, workdir: Path, store, rbac: list[dict]) -> Cluster:
    c = start_cluster(workdir, rbac)
    try:
        FLOWS[flow](c, store)
    finally:
        c.api.server.stop()
    return c


def audit(flow: str, tmp_path: Path, local_store) -> list[tuple[RuleKey, str, str, str]]:
    if flow not in AUDIT:
        c = run_flow(flow, tmp_path / f"audit-{flow}", local_store(), SHIPPED)
        AUDIT[flow] = list(c.api.server.auth.granted)
    return AUDIT[flow]


def shipped_rules() -> dict[RuleKey, dict]:
    return {
        (
            d["kind"],
            d["metadata"].get("namespace", "") if d["kind"] == "Role" else "",
            d["metadata"]["name"],
            i,
        ): r
        for d in SHIPPED
        if d["kind"] in ("Role", "ClusterRole")
        for i, r in enumerate(d["rules"])
    }


def test_the_shipped_rbac_names_the_application_namespaces():
    assert APP_NAMESPACES, "rbac.yaml binds klb-flow-runner-apps in no namespace"


@pytest.mark.parametrize("flow", FLOWS)
def test_flow_runs_under_the_shipped_rbac(prefect_server, tmp_path, local_store, drill_tmp_dir, flow):
    c = run_flow(flow, tmp_path / "cluster", local_store(), SHIPPED)
    assert c.api.server.auth.refused == []
    AUDIT[flow] = list(c.api.server.auth.granted)


def test_every_rule_and_verb_of_the_shipped_rbac_is_used(
    prefect_server, tmp_path, local_store, drill_tmp_dir
):
    """Least privilege: each verb on each resource that a rule grants is needed by some flow."""
    used = {(key, verb, res) for flow in FLOWS for key, verb, res, _ in audit(flow, tmp_path, local_store)}
    unused = [
        (key, verb, f"{group}/{res}")
        for key, rule in shipped_rules().items()
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
        if (key, verb, f"{group}/{res}") not in used
    ]
    assert unused == [], unused


def test_api_discovery_is_granted_by_the_clusters_system_discovery_role_not_by_rbac_yaml(
    prefect_server, tmp_path, local_store, drill_tmp_dir
):
    """Resource type names are resolved through discovery before a restore (discovery.py): the
    shipped account reads it through the bootstrap ClusterRole system:discovery, which every
    cluster binds to system:authenticated, so rbac.yaml needs (and has) no rule for it."""
    granted = {(key[2], res) for key, _, res, _ in audit("partial_restore", tmp_path, local_store)}
    assert ("system:discovery", "nonResourceURL /apis/") in granted
    assert ("system:discovery", "nonResourceURL /api/v1/") in granted
    assert not any("nonResourceURLs" in rule for rule in shipped_rules().values())


def test_nothing_cluster_wide_is_a_write_an_application_namespace_list_serves():
    """Cluster-wide: reads, and deleting namespaces (whose names are made per drill); every other
    write is bound per application namespace."""
    for (kind, _, name, _), rule in shipped_rules().items():
        bound_cluster_wide = any(
            d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == name for d in SHIPPED
        )
        if kind == "ClusterRole" and bound_cluster_wide:
            writes = set(rule["verbs"]) - {"get", "list", "watch"}
            assert writes <= ({"delete"} if rule["resources"] == ["namespaces"] else set()), (name, rule)


def test_secrets_are_read_cluster_wide_only_for_namespaces_made_per_run(
    prefect_server, tmp_path, local_store, drill_tmp_dir
):
    """Least privilege: the cluster-wide rule on Secrets lets the account read every Secret of the
    cluster. It is there only for the reads in namespaces no RoleBinding can name in advance: a
    drill lists the names in restore-drill-<id>, a partial restore reads the scratch copy of a
    named Secret in klb-aside-<token>-<ns>. Anything else is in an application namespace, where
    klb-flow-runner-apps is bound. When neither read is needed any more, this fails: bind the
    rule in the application namespaces instead."""
    (key,) = [
        k for k, r in shipped_rules().items() if k[0] == "ClusterRole" and r["resources"] == ["secrets"]
    ]
    assert key[2] == "klb-flow-runner"  # the ClusterRole bound cluster-wide
    elsewhere = {
        (verb, ns.split("-", 2)[0] + "-" + ns.split("-", 2)[1])
        for flow in FLOWS
        for granted_by, verb, _, ns in audit(flow, tmp_path, local_store)
        if granted_by == key and ns not in APP_NAMESPACES
    }
    assert elsewhere == {("list", "restore-drill"), ("get", "klb-aside")}, elsewhere


@pytest.mark.parametrize("rule", [f"{k[0]}/{k[2]}[{k[3]}]" for k in shipped_rules()])
def test_removing_any_rule_of_the_shipped_rbac_fails_a_flow(
    prefect_server, tmp_path, local_store, drill_tmp_dir, rule
):
    key = next(k for k in shipped_rules() if f"{k[0]}/{k[2]}[{k[3]}]" == rule)
    flow = next(f for f in FLOWS if any(k == key for k, *_ in audit(f, tmp_path, local_store)))
    reduced = copy.deepcopy(SHIPPED)
    for d in reduced:
        same_role = (d["kind"], d["metadata"].get("namespace", "") if d["kind"] == "Role" else "")
        if same_role == key[:2] and d["metadata"]["name"] == key[2]:
            del d["rules"][key[3]]
    with pytest.raises(Exception) as failed:  # noqa: PT011 (the flows' own error types vary)
        c = run_flow(flow, tmp_path / "reduced", local_store(), reduced)
        assert c.api.server.auth.refused == []  # a refusal the flow swallowed still counts
    assert "forbidden" in str(failed.value), f"without {rule}, {flow} failed otherwise: {failed.value}"


def test_a_custom_kind_the_shipped_rbac_does_not_name_fails_the_backup_saying_how_to_add_it(
    prefect_server, cluster, local_store
):
    """Least privilege: rbac.yaml lets the flows list Knative's Services, not every custom resource.
    A namespace that holds another operator's custom resources (which Velero backs up) fails the
    backup, naming the rule to add (or the exclusion), instead of an inventory that cannot see
    them; with the kind excluded the backup goes ahead."""
    from flows.backup import backup_component
    from tests.k8s_helpers import KNATIVE_SERVICE_CRD

    crd = copy.deepcopy(KNATIVE_SERVICE_CRD)
    crd["metadata"] = {"name": "widgets.example.com"}
    crd["spec"].update(group="example.com", names={"kind": "Widget", "plural": "widgets"})
    cluster.api.apply([crd])
    with pytest.raises(Exception) as refused:  # noqa: PT011 (the flow wraps the component's error)
        backup_component("kubernetes", target=cluster.velero_target(), store=local_store())
    said = str(refused.value)
    assert "forbidden by RBAC" in said and "apiGroups: [example.com], resources: [widgets]" in said
    assert "exclude_resources: [widgets.example.com]" in said
    target = cluster.velero_target(exclude_resources=["widgets.example.com"])
    backup_component("kubernetes", target=target, store=local_store())


@pytest.fixture
def drill_tmp_dir(tmp_path, monkeypatch):
    path = tmp_path / "drill-tmp"
    path.mkdir()
    monkeypatch.setenv("KLB_DRILL_TMPDIR", str(path))
    return path


def test_partial_restore_into_a_missing_namespace_says_how_to_prepare_it(
    prefect_server, cluster, local_store
):
    """The shipped account may not create namespaces (and drill-namespace-policy.yaml would refuse
    any but klb-aside-*/restore-drill-*): a copy into a namespace that does not exist fails before
    Velero restores anything, saying to create it and bind klb-flow-runner-apps there."""
    from flows.backup import backup_component
    from flows.scenarios import partial_restore

    store = local_store()
    target = cluster.velero_target()
    result = backup_component("kubernetes", target=target, store=store)
    ns = APP_NAMESPACES[0]
    with pytest.raises(ConfigurationError, match="kubectl create namespace restored-copy.*RoleBinding"):
        partial_restore(
            result.id,
            [ns],
            resources=["configmaps"],
            names=["flags"],
            namespace_mapping={ns: "restored-copy"},
            store=store,
            target=target,
        )
    assert cluster.api.server.store.list(_res("velero.io/v1", "restores")) == []
