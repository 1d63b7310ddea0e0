"""The fake Velero behaves like Velero (sandbox/k8s_emulator/velero.py, velero_restore.py).

Each test cites the Velero source (github.com/vmware-tanzu/velero) that documents the
behaviour, and fails against the old fake (a DeleteBackupRequest kept as Processed, a
PodVolumeBackup per PVC without pods, data copied whenever a PVC was created, no PVs in
backups, Services restored with their nodePorts, no data-mover operations).
"""

from __future__ import annotations

import json
import secrets

import pytest

from sandbox.k8s_emulator.controllers import claims_of
from sandbox.k8s_emulator.snapshot import BACKUPS, DBRS, PODS, PVBS, PVCS, PVS, RESTORES, SERVICES
from sandbox.k8s_emulator.store import BY_PATH
from sandbox.k8s_emulator.velero import wait_phase
from tests.k8s_helpers import k8s, seed_app


@pytest.fixture
def app(kube_api) -> str:
    ns = "vel-" + secrets.token_hex(3)
    seed_app(kube_api.controller, ns)
    return ns


def create(kube_api, res, spec: dict, name: str | None = None, **meta) -> str:
    name = name or f"{res.plural[:-1]}-{secrets.token_hex(3)}"
    body = {"metadata": {"name": name, **meta}, "spec": spec}
    kube_api.controller.store.create(res, "velero", body)
    return name


def backup(kube_api, ns: str, **spec) -> tuple[str, str]:
    name = create(kube_api, BACKUPS, {"includedNamespaces": [ns], "storageLocation": "default", **spec})
    return name, wait_phase(kube_api.controller.store, BACKUPS, "velero", name)


def restore(kube_api, backup_name: str, **spec) -> tuple[str, dict]:
    name = create(kube_api, RESTORES, {"backupName": backup_name, **spec})
    wait_phase(kube_api.controller.store, RESTORES, "velero", name)
    return name, kube_api.controller.store.get(RESTORES, "velero", name)


def pvbs(kube_api, backup_name: str) -> list[dict]:
    return kube_api.controller.store.list(PVBS, "velero", f"velero.io/backup-name={backup_name}")


def test_a_processed_delete_request_is_deleted_with_the_backup(kube_api, app):
    """pkg/controller/backup_deletion_controller.go: the backup goes Deleting and is deleted;
    then "Everything deleted correctly, so we can delete all DeleteBackupRequests for this
    backup". On an error the request stays Processed with status.errors."""
    ctl = kube_api.controller
    name, _ = backup(kube_api, app)
    dbr = create(kube_api, DBRS, {"backupName": name}, labels={"velero.io/backup-name": name})
    ctl.settle(lambda: ctl.store.find(DBRS, "velero", dbr) is None)
    assert ctl.store.find(BACKUPS, "velero", name) is None
    gone = create(kube_api, DBRS, {"backupName": "no-such-backup"})
    ctl.settle(lambda: (ctl.store.get(DBRS, "velero", gone).get("status") or {}).get("phase") == "Processed")
    assert ctl.store.get(DBRS, "velero", gone)["status"]["errors"] == ["backup not found"]


def test_pod_volume_backups_only_for_volumes_of_running_pods(kube_api, app):
    """pkg/podvolume/backupper.go BackupPodVolumes: `kube.IsPodRunning(pod)` or no backup of its
    volumes; one PodVolumeBackup per volume of a pod in the backup, none for a claim alone."""
    ctl = kube_api.controller
    name, phase = backup(kube_api, app, defaultVolumesToFsBackup=True)
    assert phase == "Completed"
    found = pvbs(kube_api, name)
    assert len(found) == 1 and found[0]["spec"]["volume"] == "data"
    assert found[0]["spec"]["pod"]["name"].startswith("api-") and found[0]["status"]["phase"] == "Completed"
    assert found[0]["metadata"]["annotations"]["velero.io/pvc-name"] == "data"  # configs.PVCNameAnnotation
    k8s(kube_api).apps.patch_namespaced_deployment_scale("api", app, {"spec": {"replicas": 0}})
    ctl.settle(lambda: not ctl.store.list(PODS, app, "app=api"))
    quiesced, phase = backup(kube_api, app, defaultVolumesToFsBackup=True)
    assert phase == "Completed" and pvbs(kube_api, quiesced) == []  # apps down: no volume data
    assert ctl.snapshots[quiesced].pod_volumes == {}


def test_file_system_data_comes_back_only_through_restored_pods(kube_api, app):
    """pkg/restore/actions/pod_volume_restore_action.go and pkg/podvolume/restorer.go: data is
    restored into a restored pod's volume (restore-wait init container); a claim restored
    without its pod is a new, empty volume (its PV had no snapshot: not restored)."""
    ctl = kube_api.controller
    name, _ = backup(kube_api, app, defaultVolumesToFsBackup=True, snapshotVolumes=False)
    claims_only = f"c-{app}"
    _, done = restore(
        kube_api,
        name,
        includedResources=["persistentvolumeclaims", "persistentvolumes"],
        namespaceMapping={app: claims_only},
    )
    assert done["status"]["phase"] == "Completed"
    ctl.settle(
        lambda: (
            ((ctl.store.find(PVCS, claims_only, "data") or {}).get("status") or {}).get("phase") == "Bound"
        )
    )
    assert (claims_only, "data") not in ctl.volumes
    with_pods = f"p-{app}"
    _, done = restore(
        kube_api,
        name,
        includedResources=["persistentvolumeclaims", "persistentvolumes", "pods"],
        namespaceMapping={app: with_pods},
    )
    assert done["status"]["phase"] == "Completed"
    assert ctl.volumes[(with_pods, "data")] == f"{app} volume v1"


def test_snapshot_backups_hold_the_pv_and_restore_it_renamed_when_taken(kube_api, app):
    """pkg/backup/actions/csi and the PVC backup item action add the bound PV; on restore
    (pkg/restore/restore.go, actions/add_pv_from_pvc_action.go) the PV comes from its snapshot,
    renamed velero-clone-<uuid> when the original still exists."""
    ctl = kube_api.controller
    name, _ = backup(kube_api, app)
    assert any(res is PVS for res, _ in ctl.snapshots[name].items)
    assert ctl.store.get(BACKUPS, "velero", name)["status"]["volumeSnapshotsCompleted"] == 1
    copy = f"s-{app}"
    restore(
        kube_api,
        name,
        includedResources=["persistentvolumeclaims", "persistentvolumes"],
        namespaceMapping={app: copy},
    )
    claim = ctl.store.get(PVCS, copy, "data")
    assert claim["spec"]["volumeName"].startswith("velero-clone-")
    assert ctl.volumes[(copy, "data")] == f"{app} volume v1"


def test_data_mover_uploads_are_item_operations(kube_api):
    """backup_types.go: with snapshotMoveData the CSI snapshot's upload is an async item
    operation (backupItemOperationsAttempted/Completed) and the backup passes through
    WaitingForPluginOperations and Finalizing before Completed."""
    ctl = kube_api.controller
    ns = "dm-" + secrets.token_hex(3)
    ctl.seed_namespace(ns)
    k8s(kube_api).core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": "csi"},
            "spec": {
                "storageClassName": "standard",
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    ctl.settle(lambda: (ctl.store.get(PVCS, ns, "csi").get("status") or {}).get("phase") == "Bound")
    name = create(kube_api, BACKUPS, {"includedNamespaces": [ns], "snapshotMoveData": True})

    ctl.settle(
        lambda: (ctl.store.get(BACKUPS, "velero", name).get("status") or {}).get("phase") == "Completed"
    )
    st = ctl.store.get(BACKUPS, "velero", name)["status"]
    assert st["backupItemOperationsAttempted"] == st["backupItemOperationsCompleted"] == 1
    assert not st.get("volumeSnapshotsAttempted") and not st.get("csiVolumeSnapshotsAttempted")


def test_restored_services_lose_their_allocated_ports(kube_api, app):
    """pkg/restore/actions/service_action.go: clusterIP(s) cleared, nodePorts deleted unless
    spec.preserveNodePorts; restoring a copy beside the original then works."""
    ctl = kube_api.controller
    name, _ = backup(kube_api, app)
    copy = f"svc-{app}"
    _, done = restore(kube_api, name, includedResources=["services"], namespaceMapping={app: copy})
    assert done["status"]["phase"] == "Completed"
    old, new = ctl.store.get(SERVICES, app, "api"), ctl.store.get(SERVICES, copy, "api")
    assert new["spec"]["clusterIP"] != old["spec"]["clusterIP"]
    assert new["spec"]["ports"][0]["nodePort"] != old["spec"]["ports"][0]["nodePort"]


def test_restored_services_keep_the_node_ports_their_user_fixed(kube_api, app):
    """service_action.go deleteNodePorts / deleteHealthCheckNodePort: with a
    last-applied-configuration, the ports it names keep their nodePort; without one, those a
    managedFields entry owns (`f:nodePort` under `k:{"port":N,"protocol":"P"}`, server-side
    apply); the others, and an unowned healthCheckNodePort of a Local LoadBalancer, go."""
    from sandbox.k8s_emulator.velero_items import LAST_APPLIED, service

    ports = [{"name": "a", "port": 80, "nodePort": 30100}, {"name": "b", "port": 81, "nodePort": 30101}]
    applied = {"spec": {"ports": [{"name": "a", "port": 80, "nodePort": 30100}]}}
    svc = {
        "metadata": {"annotations": {LAST_APPLIED: json.dumps(applied)}},
        "spec": {"type": "NodePort", "ports": json.loads(json.dumps(ports))},
    }
    service(svc, preserve_node_ports=False)
    assert [p.get("nodePort") for p in svc["spec"]["ports"]] == [30100, None]
    owned = {
        "f:spec": {
            "f:healthCheckNodePort": {},
            "f:ports": {'k:{"port":81,"protocol":"TCP"}': {"f:nodePort": {}}},
        }
    }
    lb = {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30200}
    svc = {
        "metadata": {"managedFields": [{"fieldsV1": owned}]},
        "spec": {**lb, "ports": json.loads(json.dumps(ports))},
    }
    service(svc, preserve_node_ports=False)
    assert [p.get("nodePort") for p in svc["spec"]["ports"]] == [None, 30101]
    assert svc["spec"]["healthCheckNodePort"] == 30200
    svc = {"metadata": {}, "spec": {**lb, "ports": json.loads(json.dumps(ports))}}
    service(svc, preserve_node_ports=False)
    assert "healthCheckNodePort" not in svc["spec"] and not any("nodePort" in p for p in svc["spec"]["ports"])


def test_validation_failures(kube_api, app):
    """pkg/controller/backup_controller.go: a storage location that does not exist is
    FailedValidation; pkg/controller/restore_controller.go: a restore of a backup that is not
    Completed/PartiallyFailed is FailedValidation."""
    ctl = kube_api.controller
    _, phase = backup(kube_api, app, storageLocation="nowhere")
    assert phase == "FailedValidation"
    ctl.backup_outcome = "Failed"
    failed, phase = backup(kube_api, app)
    assert phase == "Failed"
    ctl.backup_outcome = None
    _, done = restore(kube_api, failed)
    assert done["status"]["phase"] == "FailedValidation"


def test_restores_follow_veleros_resource_priorities(kube_api, app):
    """pkg/cmd/server/config/config.go defaultRestorePriorities.HighPriorities: namespaces, PVs,
    PVCs, serviceaccounts, secrets, configmaps, pods, services, and only then the rest
    (deployments): a pod is created after the ServiceAccount and the Secrets it needs."""
    ctl = kube_api.controller
    ctl.seed("v1", "serviceaccounts", app, {"metadata": {"name": "runner"}})
    name, _ = backup(kube_api, app)
    copy = f"ord-{app}"
    ctl.store.created.clear()
    _, done = restore(kube_api, name, namespaceMapping={app: copy})
    assert done["status"]["phase"] == "Completed"
    # what Velero created (the cluster's own default ServiceAccount and kube-root-ca.crt come
    # with the namespace, before anything Velero restores into it, and Velero skips its copies)
    kinds = [p for p, ns, _, labels in ctl.store.created if ns == copy and "velero.io/restore-name" in labels]
    firsts = [k for i, k in enumerate(kinds) if k not in kinds[:i]]
    order = ["persistentvolumeclaims", "serviceaccounts", "secrets", "configmaps", "pods", "services"]
    assert [k for k in firsts if k in order] == order
    assert firsts.index("deployments") > firsts.index("services")
    assert kinds.index("deployments") > max(i for i, k in enumerate(kinds) if k == "services")


def test_a_restored_item_the_api_refuses_is_an_item_error_and_the_restore_partially_fails(kube_api, app):
    """pkg/restore/restore.go restoreItem: a create the API refuses ("error restoring ...", here
    Pod Security admission) is added to the restore's errors and the restore goes on; it ends
    PartiallyFailed (restore_controller.go), it does not stay InProgress. The pod restored with
    volumes to restore has the restore-wait init container first, with its first container's
    securityContext (actions/pod_volume_restore_action.go), before the resource modifiers."""
    ctl = kube_api.controller
    name, _ = backup(kube_api, app, defaultVolumesToFsBackup=True, snapshotVolumes=False)
    strict = f"r-{app}"
    ctl.seed_namespace(strict, {"pod-security.kubernetes.io/enforce": "restricted"})
    _, done = restore(kube_api, name, namespaceMapping={app: strict})
    assert done["status"]["phase"] == "PartiallyFailed" and done["status"]["errors"] >= 1
    assert not ctl.store.list(PODS, strict)  # the seeded pods break "restricted"
    assert ctl.store.find(BY_PATH[("v1", "configmaps")], strict, "settings")  # the rest is restored
    loose = f"l-{app}"
    _, done = restore(kube_api, name, namespaceMapping={app: loose})
    assert done["status"]["phase"] == "Completed"
    pod = next(p for p in ctl.store.list(PODS, loose) if claims_of(p))
    wait = pod["spec"]["initContainers"][0]
    assert wait["name"] == "restore-wait" and wait["volumeMounts"][0]["name"] == "data"
    assert pod["metadata"]["labels"]["velero.io/restore-name"]


@pytest.mark.parametrize("fs", [False, True], ids=["snapshots", "fs"])
def test_claims_restored_without_their_pvs_keep_their_volume_name_and_get_no_data(kube_api, app, fs):
    """pkg/restore/restore.go: a claim's volumeName is reset for dynamic provisioning only when
    its PV was processed (pvsToProvision), and PodVolumeRestores are made only "when current
    restore [includes] pv/pvc"; a restore of claims without persistentvolumes leaves them
    waiting for PVs that are not there, and no data is restored. A claim that exists is
    skipped and its volume left as it is; a PV whose name is taken is renamed only for a
    remapped namespace (shouldRenamePV)."""
    ctl = kube_api.controller
    name, _ = backup(kube_api, app, defaultVolumesToFsBackup=fs, snapshotVolumes=not fs)
    copy = f"n-{app}"
    _, done = restore(
        kube_api, name, includedResources=["persistentvolumeclaims", "pods"], namespaceMapping={app: copy}
    )
    assert done["status"]["phase"] == "Completed"
    claim = ctl.store.get(PVCS, copy, "data")
    assert claim["spec"]["volumeName"] == f"pv-{app}-data" and claim["status"]["phase"] == "Pending"
    assert (copy, "data") not in ctl.volumes
    ctl.volumes[(app, "data")] = "written after the backup"
    _, done = restore(kube_api, name, includedResources=["persistentvolumeclaims", "persistentvolumes"])
    assert ctl.volumes[(app, "data")] == "written after the backup"  # the claim exists: skipped


def test_cluster_scoped_resources_only_with_every_namespace_or_when_asked(kube_api, app):
    """includeClusterResources unset ("auto"): cluster-scoped resources are backed up and
    restored only when every namespace is included (pkg/backup/backup_test.go "should not include
    cluster-scoped resource if backing up subset of namespaces and IncludeClusterResources=nil";
    pkg/restore/restore.go getOrderedResourceCollection "Skipping resource ... because it's
    cluster-scoped and only specific namespaces are included in the restore"); true includes
    them, false never."""
    ctl = kube_api.controller
    roles = BY_PATH[("rbac.authorization.k8s.io/v1", "clusterroles")]
    rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}
    ctl.seed(
        "rbac.authorization.k8s.io/v1",
        "clusterroles",
        "",
        {"metadata": {"name": "app-reader"}, "rules": [rule]},
    )
    some, _ = backup(kube_api, app)
    assert not any(res is roles for res, _ in ctl.snapshots[some].items)
    name = create(kube_api, BACKUPS, {"includedNamespaces": ["*"], "storageLocation": "default"})
    assert wait_phase(ctl.store, BACKUPS, "velero", name) == "Completed"
    assert any(res is roles for res, _ in ctl.snapshots[name].items)
    ctl.store.delete(roles, "", "app-reader")
    restore(kube_api, name, includedNamespaces=[app])
    assert ctl.store.find(roles, "", "app-reader") is None
    restore(
        kube_api, name, includedNamespaces=[app], includeClusterResources=False, existingResourcePolicy="none"
    )
    assert ctl.store.find(roles, "", "app-reader") is None
    _, done = restore(kube_api, name, includedNamespaces=[app], includeClusterResources=True)
    assert done["status"]["phase"] == "Completed"
    assert ctl.store.get(roles, "", "app-reader")["rules"] == [rule]


def test_a_zero_ttl_is_the_servers_default(kube_api, app):
    """pkg/controller/backup_controller.go prepareBackupRequest: `if request.Spec.TTL.Duration ==
    0` the default backup TTL (--default-backup-ttl, 720h) is used."""
    from datetime import UTC, datetime, timedelta

    ctl = kube_api.controller
    for ttl, hours in (("0h0m0s", 720), ("0h30m0s", 0.5)):
        name, _ = backup(kube_api, app, ttl=ttl)
        expiration = ctl.store.get(BACKUPS, "velero", name)["status"]["expiration"]
        left = datetime.strptime(expiration, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - datetime.now(UTC)
        assert abs(left - timedelta(hours=hours)) < timedelta(minutes=1)
