"""A restore through the checklist refuses what the component's restore would refuse (options
that do not fit the backup) before the checklist: no safety backup, no record, no approval asked.
Found by an adversarial review: these checks ran only inside the restore, after the checklist, and
the failed record (not marked untouched) then let a rollback put the safety backup over writes
made after a restore that had changed nothing."""

from __future__ import annotations

import pytest

from blocks.app_state import AppStateStep, AppStateTarget
from flows.backup import backup_component
from flows.recovery import restore_with_checklist
from tasks.errors import BadInput
from tasks.storage.backends import backend_for
from tests.drill.conftest import RESTORE
from tests.pg_helpers import drop, make_db, new_name, target_for

pytestmark = pytest.mark.usefixtures("prefect_server")


def _written(store) -> list[str]:
    return sorted(backend_for(store).list_keys(store.prefix))


def _two_steps(tmp_path) -> AppStateTarget:
    steps = []
    for name in ("alpha", "beta"):
        f = tmp_path / f"{name}.json"
        f.write_bytes(f"{name} v1\n".encode())
        steps.append(
            AppStateStep(
                name=name, backup_command=["cat", str(f)], restore_command=RESTORE, env={"PROD": str(f)}
            )
        )
    return AppStateTarget(steps=steps)


def test_app_state_steps_the_backup_does_not_hold_are_refused_before_the_checklist(local_store, tmp_path):
    store, target = local_store(), _two_steps(tmp_path)
    backup = backup_component("app-state", target=target, store=store)
    before = _written(store)
    with pytest.raises(BadInput, match=r"steps \['gamma'\] are not in both backup"):
        restore_with_checklist(
            "app-state",
            backup_id=backup.id,
            target=target,
            store=store,
            options={"steps": ["alpha", "gamma"]},
        )
    assert _written(store) == before  # no safety backup, no restore record


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"rename_to": {"not_restored": "x_db"}}, r"rename_to names \['not_restored'\], which are not being"),
        (
            {"quiesce_namespace": "shop", "kube_block": "no-such-block"},
            r"kube_block 'no-such-block': no klb-",
        ),
    ],
    ids=["rename-of-nothing", "missing-kube-block"],
)
def test_postgres_options_that_do_not_fit_the_backup_are_refused_before_the_checklist(
    postgres, local_store, options, refused
):
    db = new_name()
    make_db(target_for(postgres), db)
    target, store = target_for(postgres, databases=[db]), local_store()
    try:
        backup = backup_component("postgres", target=target, store=store)
        before = _written(store)
        with pytest.raises(BadInput, match=refused):
            restore_with_checklist(
                "postgres",
                backup_id=backup.id,
                target=target,
                store=store,
                options={"databases": [db], **options},
            )
        assert _written(store) == before
    finally:
        drop(target_for(postgres), db)
