"""deployments/k8s: the work pool's job template renders with prefect-kubernetes' own worker code,
manifests are valid Kubernetes objects (strict: unknown fields fail), RBAC is least privilege,
the flow image pins its tools to what this test bench ran."""

from __future__ import annotations

import asyncio
import glob
import json
import re
import subprocess
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes.client import ApiClient

from sandbox.k8s_emulator.admission import pod_security_violations
from tests import deployspec as spec

K8S = spec.ROOT / "deployments" / "k8s"
TEMPLATE = json.loads((K8S / "base-job-template.json").read_text())
DOCKERFILE = (K8S / "Dockerfile").read_text()
MANIFESTS = ["namespace.yaml", "rbac.yaml", "drill-namespace-policy.yaml", "config.yaml"]
_api = ApiClient()


def strict_model(obj: dict, kind: str | None = None):
    """Deserialize into the official client's model and back: anything the model does not know
    (a typo, a field in the wrong place) is dropped, so a round-trip that differs is invalid."""
    kind = kind or obj["kind"]
    version = obj.get("apiVersion", "v1").split("/")[-1].capitalize()
    model = _api._ApiClient__deserialize(obj, f"{version}{kind}")
    back = _api.sanitize_for_serialization(model)
    assert back == obj, f"{kind} {obj.get('metadata', {}).get('name')}: not a valid {version}{kind}"
    return model


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def render(values: dict | None = None) -> dict:
    """The Job the worker would create for a flow run, built by the worker's own code."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(TEMPLATE, values or {}))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="calm-otter", flow_id=uuid.uuid4()))
    return config.job_manifest


# ---- base job template --------------------------------------------------------------------------


def test_template_variables_are_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(TEMPLATE["variables"])
    defaults = {k: v["default"] for k, v in TEMPLATE["variables"]["properties"].items() if "default" in v}
    jsonschema.validate(defaults, TEMPLATE["variables"])


def test_job_template_renders_into_a_valid_job(prefect_server):
    job = render()
    strict_model(job, "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert job["metadata"]["namespace"] == "klb-system"
    assert pod["serviceAccountName"] == "klb-flow-runner"
    assert container["image"].endswith("/knative-lambda-backup:0.1.0")
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert container["envFrom"] == [{"configMapRef": {"name": "klb-config", "optional": False}}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "PREFECT__FLOW_RUN_ID" in env
    assert not any("SECRET" in k or "PASSWORD" in k for k in env), "secrets come from the Secret"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] == 86400


def test_no_secret_reaches_the_flow_pods_environment(prefect_server):
    """Every secret a flow uses is in a block (read from the Prefect API at run time), and the
    engines get theirs through private files. A Secret as env vars of the pod is inherited by every
    process the flows start (pg_dump, etcdctl, barman-cloud, the operator's app-state scripts) and
    readable in /proc: klb-secrets is mounted as read-only files instead, and the docs never put the
    store's encryption key (only create_blocks.py reads KLB_ENCRYPTION_KEY) into the cluster."""
    job = render()
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert [e for e in container.get("envFrom") or [] if "secretRef" in e] == []
    assert [e["name"] for e in container["env"] if "secretKeyRef" in (e.get("valueFrom") or {})] == []
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    secret_volumes = [n for n, v in volumes.items() if "secret" in v]
    assert "klb-secrets" in {volumes[n]["secret"]["secretName"] for n in secret_volumes}
    for name in secret_volumes:
        assert mounts[name]["readOnly"] is True and volumes[name]["secret"]["defaultMode"] == 0o440
    how_to = (spec.ROOT / "docs" / "deployments.md").read_text().split("kubectl -n klb-system create secret")
    assert len(how_to) == 2 and "KLB_ENCRYPTION_KEY" not in how_to[1][:200]


def test_job_variables_override_per_deployment(prefect_server):
    job = render(
        {
            "image": "registry.example/klb:0.2.0",
            "memory_limit": "8Gi",
            "namespace": "backup",
            "secret_name": "klb-secrets-prod",
            "env": {"KLB_STORE": "klb-s3-store/dr"},
        }
    )
    strict_model(job, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/klb:0.2.0"
    assert container["resources"]["limits"]["memory"] == "8Gi"
    assert job["metadata"]["namespace"] == "backup"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "klb-secrets-prod"
    assert {"name": "KLB_STORE", "value": "klb-s3-store/dr"} in container["env"]


def test_template_user_matches_the_image_user():
    pod = TEMPLATE["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert f"USER {pod['securityContext']['runAsUser']}" in DOCKERFILE
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts and "PREFECT_HOME=/tmp/prefect" in DOCKERFILE  # read-only root fs


def test_every_directory_the_flows_write_by_default_is_writable_in_the_shipped_pod():
    """The root filesystem is read-only; only the scratch emptyDir (/tmp) is writable. A PITR drill
    or recovery creates its instance under $KLB_PITR_DIR, whose code default is /var/lib/...: the
    image must point it (and Prefect's and the user's home) into /tmp."""
    from tasks.components.postgres_pitr.recover import DEFAULT_PITR_ROOT

    pod = TEMPLATE["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    writable = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if not m.get("readOnly")]
    env = dict(re.findall(r"^\s*(?:ENV\s+)?([A-Z_]+)=(\S+?)\s*\\?$", DOCKERFILE, re.M))
    for name, default in (
        ("KLB_PITR_DIR", str(DEFAULT_PITR_ROOT)),
        ("PREFECT_HOME", "~/.prefect"),
        ("HOME", "/"),
    ):
        path = env.get(name, default)
        assert any(path == m or path.startswith(m + "/") for m in writable), (name, path, writable)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()
    return int(number) * units.get(unit, 1)


def test_the_scratch_holds_what_an_etcd_backup_restore_or_drill_stages(prefect_server):
    """etcdctl writes the snapshot to a file (fsync, rename), so an etcd backup stages it in the
    pod's scratch, and a restore or drill holds it next to the throwaway member restored from it.
    A healthy etcd may grow to its default quota (2 GiB, --quota-backend-bytes): the emptyDir must
    hold twice that, or the hourly backup of such an etcd is evicted (and rescheduled, again)."""
    etcd_default_quota = 2 * 2**30
    job = render()
    (scratch,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "scratch"]
    assert _bytes(scratch["emptyDir"]["sizeLimit"]) >= 2 * etcd_default_quota + 2**30


# ---- manifests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_are_valid_kubernetes_objects(name):
    for doc in docs(name):
        strict_model(doc)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["resources"] == MANIFESTS
    on_disk = {Path(p).name for p in glob.glob(str(K8S / "*.yaml"))}
    assert on_disk - {"kustomization.yaml", "worker-values.yaml"} == set(MANIFESTS)


def test_strict_validation_rejects_a_misplaced_field(prefect_server):
    job = render()
    job["spec"]["template"]["spec"]["completions"] = 1  # a Job field put into the PodSpec
    with pytest.raises(AssertionError, match="not a valid"):
        strict_model(job, "Job")


RBAC = docs("rbac.yaml")


def _rights() -> dict[tuple[str, str, str], set[str]]:
    roles = {(d["kind"], d["metadata"]["name"]): d for d in RBAC if d["kind"] in ("Role", "ClusterRole")}
    rights: dict[tuple[str, str, str], set[str]] = {}
    for binding in (d for d in RBAC if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "klb-flow-runner", "namespace": "klb-system"}
        ]
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        scope = binding["metadata"].get("namespace", "*")
        assert role["metadata"].get("namespace", "*") in (scope, "*")
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    rights.setdefault((scope, group, resource), set()).update(rule["verbs"])
    return rights


def test_rbac_has_no_wildcard_escalation_or_exec():
    """What the flows need is derived from their calls in tests/test_shipped_rbac.py (every rule
    and verb used, removing any one fails a flow); this checks what must never be there."""
    rights = _rights()
    assert rights
    for (_, group, resource), verbs in rights.items():
        assert "*" not in verbs and "*" not in resource and group != "*"
        assert resource not in {"pods/exec", "serviceaccounts/token"}
        if group == "rbac.authorization.k8s.io" or resource == "serviceaccounts":
            # listed by name for the inventory of a backup; never written (no way to escalate)
            assert verbs <= {"list"}, (resource, verbs)
        assert "escalate" not in verbs and "bind" not in verbs and "impersonate" not in verbs
        if resource == "secrets":
            assert verbs <= {"get", "list", "create", "update"} and "delete" not in verbs


def test_service_account_is_the_one_the_template_uses():
    (sa,) = [d for d in RBAC if d["kind"] == "ServiceAccount"]
    props = TEMPLATE["variables"]["properties"]
    assert (sa["metadata"]["name"], sa["metadata"]["namespace"]) == (
        props["service_account_name"]["default"],
        props["namespace"]["default"],
    )


def test_namespace_create_delete_is_limited_to_drill_namespaces():
    policy, binding = docs("drill-namespace-policy.yaml")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert set(rule["operations"]) == {"CREATE", "DELETE"} and rule["resources"] == ["namespaces"]
    (cond,) = policy["spec"]["matchConditions"]
    assert "system:serviceaccount:klb-system:klb-flow-runner" in cond["expression"]
    (check,) = policy["spec"]["validations"]
    for allowed in ("startsWith('restore-drill-')", "startsWith('klb-aside-')", "'klb.io/restorable'"):
        assert allowed in check["expression"]  # the names the flows make per run, and opted-in ones
    assert policy["spec"]["failurePolicy"] == "Fail"


def test_worker_values_point_at_the_pool_and_namespace():
    values = yaml.safe_load((K8S / "worker-values.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in spec.deployments()}
    assert pools == {values["worker"]["config"]["workPool"]}
    assert values["worker"]["config"]["type"] == "kubernetes"
    namespace = TEMPLATE["variables"]["properties"]["namespace"]["default"]
    assert values["worker"]["config"]["jobNamespace"] == namespace
    assert values["worker"]["apiConfig"] == "selfHostedServer"
    # the template is passed with --set-file so there is one copy of it
    helm = "--set-file worker.config.baseJobTemplate.configuration=deployments/k8s/base-job-template.json"
    assert helm in (K8S / "worker-values.yaml").read_text()
    assert helm in (spec.ROOT / "docs" / "deployments.md").read_text()


def _enforced_level() -> str:
    (ns,) = [d for d in docs("namespace.yaml") if d["kind"] == "Namespace"]
    return ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]


def test_flow_job_pods_pass_the_namespaces_pod_security(prefect_server):
    """klb-system enforces Pod Security "restricted": a Job pod that breaks it is never created
    (kubernetes.io/docs/concepts/security/pod-security-standards/)."""
    pod = render()["spec"]["template"]["spec"]
    assert pod_security_violations(pod, _enforced_level()) == []


def test_worker_pod_passes_the_namespaces_pod_security():
    """The worker runs in klb-system too: its pod, as the prefect-worker chart builds it from
    worker.podSecurityContext / containerSecurityContext, must pass "restricted" on these values
    alone (the chart's defaults set no capabilities.drop and no seccompProfile)."""
    worker = yaml.safe_load((K8S / "worker-values.yaml").read_text())["worker"]
    pod = {
        "securityContext": worker["podSecurityContext"],
        "containers": [{"name": "prefect-worker", "securityContext": worker["containerSecurityContext"]}],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    }
    assert pod_security_violations(pod, _enforced_level()) == []


# ---- the flow image -----------------------------------------------------------------------------


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)
    assert match, f"Dockerfile must pin ARG {name}"
    return match.group(1)


def _installed(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    assert out.returncode == 0, f"{package} is not installed on this test bench (scripts/setup.sh)"
    return out.stdout


def test_image_pins_postgresql_client_and_server_of_the_server_major():
    version, major = _arg("POSTGRESQL_VERSION"), _arg("POSTGRESQL_MAJOR")
    assert '"postgresql-client-${POSTGRESQL_MAJOR}=${POSTGRESQL_VERSION}"' in DOCKERFILE
    assert '"postgresql-${POSTGRESQL_MAJOR}=${POSTGRESQL_VERSION}"' in DOCKERFILE  # pg_ctl/postgres: PITR
    assert major == "15" and version.startswith("15.")
    # the server binaries PITR runs, of the pinned major (one ARG to change for an upgrade)
    assert "PATH=/usr/lib/postgresql/${POSTGRESQL_MAJOR}/bin:$PATH" in DOCKERFILE
    from sandbox.services import pg_bindir

    assert pg_bindir().parent.name == major, "the tests' server major must match the image's"
    assert version == _installed("postgresql-client-15"), "image pins what the tests ran"


def test_image_pins_etcdctl_and_the_etcd_server():
    assert '"etcd-client=${ETCD_VERSION}"' in DOCKERFILE
    assert '"etcd-server=${ETCD_VERSION}"' in DOCKERFILE  # the throwaway member of restores/drills
    assert _arg("ETCD_VERSION") == _installed("etcd-client") == _installed("etcd-server")


def test_image_installs_the_locked_python_set_with_barman_cloud():
    lock = (spec.ROOT / "requirements.lock").read_text()
    assert re.search(r"^barman==\d+\.\d+\.\d+$", lock, re.M), "the PITR engine is pinned in the lock"
    assert re.search(r"^prefect==3\.8\.8$", lock, re.M)
    assert "pip install --no-cache-dir --no-deps --only-binary :all: -r requirements.lock" in DOCKERFILE
    assert "barman-cloud-backup --version" in DOCKERFILE
    for path in ("backup-table.yaml", "./blocks", "./tasks", "./flows"):
        assert path in DOCKERFILE
    assert re.search(r"^FROM python:3\.11-slim-bookworm", DOCKERFILE, re.M)
