"""Component "volumes" restores (tasks/components/volumes.py, kubernetes/claims.py) against the
emulator and its fake Velero: the data comes back, and only the volumes asked for change."""

from __future__ import annotations

import secrets

import pytest

from sandbox.k8s_emulator.admission import ENFORCE
from tasks.components import volumes
from tasks.components.kubernetes.quiesce import quiesced
from tasks.operations.disaster import delete_pvcs_task
from tasks.storage.session import backup_session
from tests.k8s_helpers import fresh_controller

# what Pod Security "restricted" asks of every container
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture
def ctl(kube_api):
    yield from fresh_controller(kube_api)


@pytest.fixture
def store(local_store):
    return local_store()


def volumes_backup(target, store):
    with backup_session(store, "volumes") as session:
        volumes.backup(target, session)
        session.commit()
    return session.manifest


def test_file_system_volumes_come_back_in_a_namespace_that_enforces_restricted(kube_api, ctl, store):
    """The helper pods that bring file-system backup data back are created by Velero in the
    app's namespace, where Pod Security admission applies: their pause container must meet
    "restricted" (before, it had no securityContext, every helper pod was refused, and the
    restore of a restricted namespace ended PartiallyFailed with no data)."""
    ns = "strict-" + secrets.token_hex(3)
    ctl.seed_namespace(ns, {ENFORCE: "restricted"})
    ctl.seed_pvc(ns, "data", content="strict volume v1")
    ctl.seed_deployment(ns, "api", 2, pvcs=("data",), security_context=RESTRICTED)
    target = kube_api.velero_target(include_namespaces=[ns], default_volumes_to_fs_backup=True)
    manifest = volumes_backup(target, store)
    ctl.volumes[(ns, "data")] = "corrupted"
    with quiesced(target.kube, ns):
        delete_pvcs_task.fn(target, ns, ["data"])
        report = volumes.restore(target, manifest, store, volumes.RestoreOptions(namespaces=[ns]))
    assert report["phase"] == "Completed"
    assert ctl.volumes[(ns, "data")] == "strict volume v1"
