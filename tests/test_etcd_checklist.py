"""The etcd swap through the pre-restore checklist (restore_with_checklist('etcd', execute_swap)).
Found by an adversarial review: a swap the component refuses (not the control-plane node, a
leftover of an earlier attempt) was refused only inside the restore, after the checklist's safety
snapshot and approval; and a swap that failed and rolled itself back left a 'failed' record that
a rollback could act on: a second control-plane swap, putting the safety snapshot over writes
made since, after the control plane was already as it had been."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
from tasks.errors import BadInput, ComponentFailed, ConfigurationError
from tasks.storage.backends import backend_for
from tasks.storage.layout import RESTORE_RECORD
from tasks.verbs import backup_task
from tests.test_etcd import StaticPodKubelet, put_keys, read_prefix

pytestmark = pytest.mark.usefixtures("prefect_server")
SWAP = {"execute_swap": True}


def _written(store) -> list[str]:
    return sorted(backend_for(store).list_keys(store.prefix))


def test_a_swap_off_the_control_plane_is_refused_before_the_checklist(etcd, tmp_path, local_store):
    from blocks.etcd import EtcdTarget

    store = local_store()
    target = EtcdTarget(
        endpoints=[etcd.url], manifests_dir=str(tmp_path / "manifests"), data_dir=str(tmp_path / "etcd")
    )
    manifest = backup_task.fn("etcd", target, store)
    before = _written(store)
    with pytest.raises(ConfigurationError, match="not the etcd control-plane node"):
        restore_with_checklist("etcd", backup_id=manifest.id, target=target, store=store, options=SWAP)
    assert _written(store) == before  # no safety snapshot, no restore record


def test_a_swap_with_a_leftover_of_an_earlier_attempt_is_refused_before_the_checklist(tmp_path, local_store):
    store = local_store()
    with StaticPodKubelet(tmp_path) as kubelet:
        target = kubelet.target()
        manifest = backup_task.fn("etcd", target, store)
        Path(f"{kubelet.data}-old-{manifest.id}").mkdir()
        before = _written(store)
        with pytest.raises(BadInput, match="nothing was changed.*earlier attempt"):
            restore_with_checklist("etcd", backup_id=manifest.id, target=target, store=store, options=SWAP)
        assert _written(store) == before and kubelet.starts == 1


def test_a_swap_that_rolled_itself_back_is_recorded_untouched_and_not_rolled_back_again(
    tmp_path, local_store
):
    store = local_store()
    original: list[int] = []

    def restored_data_in_place() -> bool:
        return bool(original) and kubelet.data.stat().st_ino != original[0]

    with StaticPodKubelet(tmp_path, refuse_start=restored_data_in_place) as kubelet:
        original.append(kubelet.data.stat().st_ino)
        target = kubelet.target(swap_wait_seconds=5)
        put_keys(kubelet.client, "/registry/configmaps/", 3)
        manifest = backup_task.fn("etcd", target, store)
        put_keys(kubelet.client, "/registry/after-backup/", 1)
        with pytest.raises(ComponentFailed, match="Rolled back"):
            restore_with_checklist("etcd", backup_id=manifest.id, target=target, store=store, options=SWAP)
        (key,) = [k for k in _written(store) if k.endswith("/" + RESTORE_RECORD)]
        record = load_restore_record(store, key.rsplit("/", 2)[-2])
        assert record.status == "failed" and record.target_changed is False
        put_keys(kubelet.client, "/registry/after-the-swap/", 1)  # written since: must stay
        with pytest.raises(BadInput, match="failed before it changed etcd"):
            rollback_restore(record.id, target=target, store=store)
        assert kubelet.data.stat().st_ino == original[0]
        assert len(read_prefix(kubelet.client, "/registry/after-the-swap/")[0]) == 1
