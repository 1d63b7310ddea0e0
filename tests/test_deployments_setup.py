"""scripts/create_blocks.py and the per-component lock, against a real Prefect server."""

from __future__ import annotations

import secrets

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from blocks.app_state import AppStateTarget
from blocks.store import LocalStore
from flows.locks import component_lock, ensure_component_limit, lock_name
from scripts import create_blocks
from tasks.components.registry import SPECS
from tasks.errors import ConfigurationError, TransientError
from tasks.storage.catalog import list_backups
from tests.deployspec import ROOT


def _spec(tmp_path, name: str, key_ref: str = "${KLB_TEST_KEY}") -> create_blocks.BlocksFile:
    doc = {
        "blocks": [
            {
                "type": "klb-local-store",
                "name": name,
                "data": {"path": str(tmp_path / "store"), "encryption_key": key_ref},
            },
            {
                "type": "klb-app-state-target",
                "name": name,
                "data": {"steps": [{"name": "s", "backup_command": ["true"], "restore_command": ["true"]}]},
            },
        ]
    }
    return create_blocks.BlocksFile.model_validate(doc)


def test_create_blocks_is_idempotent_and_keeps_secrets_out_of_output(prefect_server, tmp_path):
    name = "t-" + secrets.token_hex(4)
    key = "k-" + secrets.token_hex(16)
    env = {"KLB_TEST_KEY": key}
    lines: list[str] = []
    first = create_blocks.apply(_spec(tmp_path, name), env, log=lines.append)
    assert first == {f"klb-local-store/{name}": "created", f"klb-app-state-target/{name}": "created"}
    block_id = LocalStore.load(name)._block_document_id
    assert LocalStore.load(name).encryption_key.get_secret_value() == key

    again = create_blocks.apply(_spec(tmp_path, name), env, log=lines.append)
    assert set(again.values()) == {"unchanged"}
    assert LocalStore.load(name)._block_document_id == block_id

    changed = create_blocks.apply(_spec(tmp_path, name), {"KLB_TEST_KEY": key + "2"}, log=lines.append)
    assert changed[f"klb-local-store/{name}"] == "updated"
    assert LocalStore.load(name)._block_document_id == block_id
    assert LocalStore.load(name).encryption_key.get_secret_value() == key + "2"
    assert lines and not any(key in line for line in lines)
    assert any("registered block type klb-app-state-target" in line for line in lines)


def test_create_blocks_creates_the_component_limits(prefect_server, tmp_path):
    create_blocks.apply(create_blocks.BlocksFile(), {}, log=lambda _: None)
    with get_client(sync_client=True) as client:
        for component in SPECS:
            limit = client.read_global_concurrency_limit_by_name(lock_name(component))
            assert (limit.limit, limit.active) == (1, True)


def test_a_bad_file_changes_nothing(prefect_server, tmp_path):
    name = "bad-" + secrets.token_hex(4)
    with pytest.raises(create_blocks.SetupError, match="KLB_TEST_KEY is referenced but not set"):
        create_blocks.apply(_spec(tmp_path, name), {}, log=lambda _: None)
    spec = _spec(tmp_path, name, key_ref="x")
    spec.blocks[1].data["steps"][0]["backup_command"] = []  # invalid second block
    with pytest.raises(create_blocks.SetupError, match="klb-app-state-target/.*backup_command"):
        create_blocks.apply(spec, {}, log=lambda _: None)
    with pytest.raises(ValueError):
        LocalStore.load(name)  # the valid first block was not saved either


def test_check_mode_validates_without_a_server(tmp_path, monkeypatch, capsys):
    good = tmp_path / "blocks.yaml"
    good.write_text(yaml.safe_dump(_spec(tmp_path, "x").model_dump()))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there
    monkeypatch.setenv("KLB_TEST_KEY", "s3cret-value")
    assert create_blocks.main(["--check", "--file", str(good)]) == 0
    out = capsys.readouterr()
    assert "valid     klb-local-store/x" in out.out and "s3cret-value" not in out.out + out.err
    monkeypatch.delenv("KLB_TEST_KEY")
    assert create_blocks.main(["--check", "--file", str(good)]) == 2
    assert "KLB_TEST_KEY is referenced but not set" in capsys.readouterr().err


def test_the_example_blocks_file_is_valid():
    spec = create_blocks.load_spec(str(ROOT / "deployments/blocks.example.yaml"), {})
    env = {
        "KLB_ENCRYPTION_KEY": "k",
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_SECRET_ACCESS_KEY": "s",
        "FLAGS_API_TOKEN": "t",
    }
    for block in spec.blocks:
        create_blocks.build_block(block, env)


# ---- one operation per component ---------------------------------------------------------------


def test_component_lock_excludes_the_same_component_only(prefect_server):
    with component_lock("etcd", timeout_seconds=5):
        with (
            pytest.raises(TransientError, match="another backup/restore of etcd"),
            component_lock("etcd", timeout_seconds=1),
        ):
            pytest.fail("two holders of one component")
        with component_lock("rabbitmq", timeout_seconds=5):
            pass  # another component is free
    with (
        component_lock("postgres", timeout_seconds=5),
        pytest.raises(TransientError, match="postgres-pitr"),
        component_lock("postgres-pitr", timeout_seconds=1),
    ):
        pytest.fail("a PITR base backup while the same server is restored")
    with component_lock("etcd", timeout_seconds=5):
        pass  # released


def test_a_limit_that_lost_its_meaning_is_refused(prefect_server):
    ensure_component_limit("volumes")
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(lock_name("volumes"), GlobalConcurrencyLimitUpdate(limit=2))
        try:
            with pytest.raises(ConfigurationError, match="must be active with limit 1"):
                ensure_component_limit("volumes")
        finally:
            client.update_global_concurrency_limit(
                lock_name("volumes"), GlobalConcurrencyLimitUpdate(limit=1)
            )


def test_backup_and_restore_of_a_component_never_overlap(prefect_server, local_store, tmp_path, monkeypatch):
    from flows.backup import backup_component
    from flows.restore import restore_component

    def lock_wait(seconds: int) -> None:
        # short where the slot is held (the run must give up), generous where it is free: on a
        # loaded machine the acquire round trips alone can take more than a second
        monkeypatch.setenv("KLB_COMPONENT_LOCK_WAIT_SECONDS", str(seconds))

    restored = tmp_path / "restored"
    restored.mkdir()
    target = AppStateTarget(
        steps=[
            {
                "name": "state",
                "backup_command": ["printf", "hello"],
                "restore_command": ["dd", f"of={restored / 'state'}", "status=none"],
            }
        ]
    )
    store = local_store()
    # a restore is running
    lock_wait(1)
    with component_lock("app-state", timeout_seconds=5), pytest.raises(TransientError, match="app-state"):
        backup_component("app-state", target=target, store=store)
    assert list_backups(store, "app-state") == []  # nothing half-written

    lock_wait(120)
    done = backup_component("app-state", target=target, store=store)
    # a backup is running
    lock_wait(1)
    with component_lock("app-state", timeout_seconds=5), pytest.raises(TransientError, match="app-state"):
        restore_component("app-state", backup_id=done.id, target=target, store=store)
    assert not (restored / "state").exists()  # the target was not touched
    lock_wait(120)
    restore_component("app-state", backup_id=done.id, target=target, store=store)
    assert (restored / "state").read_text() == "hello"
