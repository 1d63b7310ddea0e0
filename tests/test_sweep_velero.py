"""The integrity sweep (flows/maintenance.py verify_backups) over the Velero-owned components: our
store holds only Velero's record, the data is Velero's. The sweep's 'verified' must mean Velero
still holds the backup, Completed (the runbook's `velero backup describe | grep Completed`), not
only that our record reads back."""

from __future__ import annotations

import pytest

from flows.backup import backup_component
from flows.maintenance import verify_backups
from tasks.errors import IntegrityError
from tasks.storage.catalog import get_backup, latest_backup
from tasks.storage.health import Status, finding
from tests.k8s_helpers import k8s, seed_namespaces


@pytest.fixture
def target(kube_api, ctl):
    return kube_api.velero_target(include_namespaces=list(seed_namespaces(ctl, "swept")))


def test_a_velero_backup_gone_from_the_cluster_fails_the_sweep_and_is_never_latest(
    prefect_server, kube_api, target, local_store
):
    store = local_store()
    manifest = get_backup(store, backup_component("kubernetes", target=target, store=store).id)
    swept = verify_backups(components=["kubernetes"], store=store, targets={"kubernetes": target})
    assert swept[f"primary:{manifest.id}"]["component_check"]["velero_phase"] == "Completed"
    # Velero's GC (or anyone) deletes the Backup CR: our record still reads back whole
    k8s(kube_api).custom.delete_namespaced_custom_object(
        "velero.io", "v1", target.namespace, "backups", manifest.engine["velero_backup"]
    )
    st = verify_backups(
        components=["kubernetes"], store=store, targets={"kubernetes": target}, return_state=True
    )
    assert st.is_failed()
    assert "Velero has no backup" in finding(store, manifest.id).reason
    assert finding(store, manifest.id).status == Status.damaged
    with pytest.raises(IntegrityError, match="damaged"):
        latest_backup(store, "kubernetes")


def test_a_sweep_that_cannot_ask_velero_does_not_call_its_backups_verified(
    prefect_server, kube_api, target, local_store, monkeypatch, caplog
):
    monkeypatch.delenv("KLB_VELERO_TARGET", raising=False)
    store = local_store()
    manifest = backup_component("kubernetes", target=target, store=store)
    st = verify_backups(components=["kubernetes"], store=store, return_state=True)
    assert st.is_failed()
    # the run's own failure (what the Failed-run notification carries) says why, not only which
    assert "no Velero target" in str(st.result(raise_on_failure=False))
    assert any("no Velero target" in r.getMessage() and manifest.id in r.getMessage() for r in caplog.records)
    assert finding(store, manifest.id) is None  # neither verified nor damaged: not proven either way


def test_klb_verify_does_not_call_a_velero_backup_verified_without_asking_velero(
    prefect_server, kube_api, target, tmp_path, monkeypatch, capsys
):
    """`klb verify` reads our record of a Velero backup back; 'verified' must also mean Velero
    holds it, Completed: with no Velero target it cannot say so, and with one it asks."""
    from blocks.store import LocalStore
    from flows.console import OK, PROBLEM, main

    monkeypatch.delenv("KLB_STORE", raising=False)
    monkeypatch.delenv("KLB_VELERO_TARGET", raising=False)
    monkeypatch.setenv("KLB_STORE_DIR", str(tmp_path / "store"))
    store = LocalStore()
    manifest = get_backup(store, backup_component("kubernetes", target=target, store=store).id)

    def verify() -> tuple[int, str]:
        capsys.readouterr()
        code = main(["verify", manifest.id])
        return code, next(line for line in capsys.readouterr().out.splitlines() if manifest.id in line)

    code, line = verify()
    assert code == PROBLEM and "no Velero target" in line and not line.endswith("verified")
    target.save("swept-velero", overwrite=True)
    monkeypatch.setenv("KLB_VELERO_TARGET", "swept-velero")
    code, line = verify()
    assert code == OK and line.endswith("verified")
    k8s(kube_api).custom.delete_namespaced_custom_object(
        "velero.io", "v1", target.namespace, "backups", manifest.engine["velero_backup"]
    )
    code, line = verify()
    assert code == PROBLEM and "Velero has no backup" in line
