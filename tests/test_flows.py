"""The public flow API through a real Prefect server, with the app-state component."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.states import State

from blocks.app_state import AppStateStep, AppStateTarget
from flows.backup import backup_all, backup_component
from flows.maintenance import verify_backups
from flows.restore import restore_component
from tasks.storage.backends import backend_for
from tasks.storage.catalog import list_backups

pytestmark = pytest.mark.usefixtures("prefect_server")


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture
def app_dir(tmp_path) -> Path:
    src = tmp_path / "app"
    (src / "sub").mkdir(parents=True)
    (src / "state.json").write_text('{"sessions": 42}')
    (src / "sub" / "blob.bin").write_bytes(os.urandom(200_000))
    return src


def tar_target(src: Path, dest: Path) -> AppStateTarget:
    dest.mkdir(exist_ok=True)
    return AppStateTarget(
        steps=[
            AppStateStep(
                name="files",
                backup_command=["tar", "-C", str(src), "-cf", "-", "."],
                restore_command=["tar", "-C", str(dest), "-xf", "-"],
            )
        ]
    )


def test_backup_then_restore_through_flows(any_store, app_dir, tmp_path):
    store = any_store()
    dest = tmp_path / "restored"
    target = tar_target(app_dir, dest)
    result = backup_component("app-state", target=target, store=store)
    assert result.verified and result.objects == 1 and result.id.startswith("app-state-")
    assert [m.id for m in list_backups(store, "app-state")] == [result.id]
    report = restore_component("app-state", backup_id="latest", target=target, store=store)
    assert report["backup_id"] == result.id and report["restored_steps"] == ["files"]
    assert tree_digest(dest) == tree_digest(app_dir)
    # task results persist beside the backups, in the configured store
    results = [k for k in backend_for(store).list_keys(store.prefix) if "/_prefect-results/" in k]
    assert results, "the backup task's result was not persisted to the store"


async def _artifact_keys(keys: list[str]) -> set[str]:
    """Which of `keys` the server holds (filtered there: a session's server has many pages)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        return {a.key for a in found if a.key}


def test_flows_publish_artifacts(local_store, app_dir, tmp_path):
    import asyncio

    store = local_store()
    backup_component("app-state", target=tar_target(app_dir, tmp_path / "r"), store=store)
    verify_backups(components=["app-state"], store=store)
    keys = asyncio.run(_artifact_keys(["backup-app-state", "verify-backups"]))
    assert {"backup-app-state", "verify-backups"} <= keys


def test_backup_all_reports_what_is_not_configured(local_store, app_dir, tmp_path):
    store = local_store()
    result = backup_all(targets={"app-state": tar_target(app_dir, tmp_path / "r")}, store=store)
    assert list(result.backups) == ["app-state"]
    assert not result.failed
    assert set(result.not_configured) >= {"etcd", "postgres"}  # no target configured here


def test_backup_all_fails_when_a_named_component_cannot_run(local_store):
    state: State = backup_all(components=["app-state"], store=local_store(), return_state=True)
    assert state.is_failed()
    assert "app-state" in state.message


def test_a_failing_script_fails_the_flow_with_its_reason_and_stores_nothing(local_store):
    store = local_store()
    target = AppStateTarget(
        steps=[
            AppStateStep(
                name="broken",
                backup_command=["sh", "-c", "echo partial; echo 'database is locked' >&2; exit 1"],
                restore_command=["true"],
            )
        ]
    )
    state = backup_component("app-state", target=target, store=store, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="database is locked"):
        state.result()
    assert list_backups(store, "app-state") == []
    assert list(backend_for(store).list_keys("backups/app-state")) == []


def test_restore_refuses_a_corrupted_backup_before_touching_the_target(local_store, app_dir, tmp_path):
    store = local_store()
    dest = tmp_path / "restored"
    target = tar_target(app_dir, dest)
    manifest_id = backup_component("app-state", target=target, store=store).id
    obj = list_backups(store, "app-state")[0].objects[0]
    path = Path(store.path) / obj.key
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    state = restore_component(
        "app-state", backup_id=manifest_id, target=target, store=store, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(Exception, match=f"{obj.key}: "):
        state.result()
    assert list(dest.iterdir()) == []  # never touched
    state = verify_backups(components=["app-state"], store=store, return_state=True)
    assert state.is_failed() and manifest_id in state.message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"component": "mysql"}, "Input should be"),
        ({"component": "app-state", "backup_id": "../../etc"}, "malformed backup id"),
        ({"component": "app-state", "backup_id": "latest"}, "no app-state backups"),
        ({"component": "app-state", "store": "no-such-store"}, "no store block named 'no-such-store'"),
    ],
)
def test_bad_restore_input_gives_a_clear_message(local_store, kwargs, message):
    kwargs.setdefault("store", local_store())
    state = restore_component(**kwargs, return_state=True)
    assert state.is_failed()
    assert message in state.message
