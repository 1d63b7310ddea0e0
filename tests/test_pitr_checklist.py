"""PITR through the pre-restore checklist (restore_with_checklist('postgres-pitr')), against a real
archiving cluster. Found by an adversarial review: a bad target (in the future, naive, outside the
window) was refused only inside the restore, after the checklist's safety backup, a whole base
backup of production taken for a restore that never writes to it (twice with an approval); and
'latest' was the newest base backup, so a time between two base backups was refused after it.

History (module scope): rows 'one' -> base backup 1 -> rows 'two' -> T -> rows 'three'
-> base backup 2 -> rows 'four'.
"""

from __future__ import annotations

import secrets
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from flows.recovery import restore_with_checklist
from sandbox import services
from tasks.components import postgres_pitr as pitr
from tasks.errors import BadInput
from tasks.storage.backends import backend_for
from tasks.storage.session import backup_session
from tests.test_pitr import _archiving_cluster, _sql, _store, _switch_and_wait

pytestmark = pytest.mark.usefixtures("prefect_server")


def _base_backup(target, store):
    with backup_session(store, "postgres-pitr") as session:
        pitr.backup(target, session)
        session.commit()
    return session.manifest


@pytest.fixture(scope="module")
def two_bases(request, moto):
    svc, target, bucket, _ = _archiving_cluster(request, moto, "pitr-checklist")
    store = _store(moto, bucket)
    _sql(svc, "create table t (id serial primary key, phase text not null)")
    _sql(svc, "insert into t (phase) values ('one')")
    _switch_and_wait(svc)
    first = _base_backup(target, store)
    _sql(svc, "insert into t (phase) values ('two')")
    at = _sql(svc, "select clock_timestamp()")[0][0]
    _sql(svc, "insert into t (phase) values ('three')")
    _switch_and_wait(svc)
    second = _base_backup(target, store)
    _sql(svc, "insert into t (phase) values ('four')")
    _switch_and_wait(svc)
    return {"svc": svc, "target": target, "store": store, "first": first, "second": second, "T": at}


@pytest.fixture
def new_dir():
    path = services.session_dir("pitr-restores") / secrets.token_hex(4)
    yield str(path)
    if (path / pitr.STATE_FILE).exists():
        pitr.stop_instance(str(path))
    shutil.rmtree(path, ignore_errors=True)


def _written(store) -> list[str]:
    return sorted(backend_for(store).list_keys(store.prefix))


@pytest.mark.parametrize(
    ("when", "refused"),
    [
        (lambda b: (datetime.now(UTC) + timedelta(hours=1)).isoformat(), "in the future"),
        (lambda b: "2026-01-15T14:30:00", "has no time zone"),
        (
            lambda b: (b["first"].source_time - timedelta(hours=1)).isoformat(),
            "before the end of base backup",
        ),
        (lambda b: (datetime.now(UTC) - timedelta(seconds=1)).isoformat(), "after the last archived"),
    ],
    ids=["future", "naive", "before-the-window", "after-the-window"],
)
def test_a_pitr_target_outside_what_can_be_recovered_is_refused_before_the_checklist(
    two_bases, new_dir, when, refused
):
    store = two_bases["store"]
    before = _written(store)
    with pytest.raises(BadInput, match=refused):
        restore_with_checklist(
            "postgres-pitr",
            backup_id=two_bases["first"].id,
            target=two_bases["target"],
            store=store,
            options={"directory": new_dir, "target_time": when(two_bases)},
        )
    assert _written(store) == before  # no safety base backup, no restore record
    assert not Path(new_dir).exists()


def test_a_pitr_through_the_checklist_starts_from_a_base_backup_that_reaches_it_and_takes_no_safety_backup(
    two_bases, new_dir
):
    """'latest' was the newest base backup (2), which ends after T: refused after the safety base
    backup. It is now base backup 1, as pitr_postgres chooses; the restore writes nothing to
    production, so no safety backup is taken."""
    store = two_bases["store"]
    bases = len([k for k in _written(store) if k.endswith("/manifest.json")])
    record = restore_with_checklist(
        "postgres-pitr",
        target=two_bases["target"],
        store=store,
        options={"directory": new_dir, "target_time": two_bases["T"].isoformat()},
    )
    assert record.status == "restored" and record.backup_id == two_bases["first"].id
    assert record.safety_backup_id is None and record.target_changed is False
    line = next(x for x in record.checklist if x.item == "prepare rollback")
    assert "no safety backup" in line.detail
    assert len([k for k in _written(store) if k.endswith("/manifest.json")]) == bases
    port, password = record.report["port"], two_bases["svc"].extra["password"]
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=password) as conn:
        phases = [r[0] for r in conn.execute("select phase from t order by id")]
    assert phases == ["one", "two"]


def test_the_approval_form_says_a_pitr_without_a_target_is_promoted_at_once():
    """The form said 'paused at the target; promote_pitr is separate' for every PITR; with no
    target (or 'latest') PostgreSQL ends recovery itself and the instance is writable at once."""
    from tasks.operations.plan import action_of
    from tasks.verbs import restore_options

    def action(**given):
        return action_of("postgres-pitr", restore_options("postgres-pitr", {"directory": "/x", **given}))

    assert "promoted at once" in action() and "promoted at once" in action(target_time="latest")
    assert "paused at the target" in action(target_time="2026-01-15T14:30:00Z")
    assert "paused at the target" in action(target_lsn="0/3000060")


def test_a_pitr_while_the_source_server_is_down_is_not_refused_by_the_checklist(two_bases, new_dir):
    """Recovering from the archive is what a PITR is for when the server is gone; the checklist
    refused it ('cannot describe the current state ... pass without_rollback=True') though the
    restore writes nothing to the server. It is a warning now."""
    from tasks.proc import free_port

    down = two_bases["target"].model_copy(update={"port": free_port()})  # nothing listens there
    record = restore_with_checklist(
        "postgres-pitr",
        backup_id=two_bases["first"].id,
        target=down,
        store=two_bases["store"],
        options={"directory": new_dir, "target_time": two_bases["T"].isoformat()},
    )
    line = next(x for x in record.checklist if x.item == "document current state")
    assert record.status == "restored" and line.mark == "warn" and "writes nothing" in line.detail
