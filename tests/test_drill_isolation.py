"""A drill relies on describing production before and after it (the isolation check): when that
cannot be done, the drill is not PASSED on the restore alone. Real PostgreSQL: the production
database refuses connections while the drill restores its backup into a side database."""

from __future__ import annotations

import pytest

from tasks.operations.drills import Status

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_a_drill_whose_production_cannot_be_described_is_not_passed(postgres, local_store):
    from flows.backup import backup_component
    from flows.drill import restore_drill
    from tests.pg_helpers import exec_in, make_db, new_name, target_for

    store = local_store()
    db = new_name("iso")
    make_db(target_for(postgres), db, rows=20)
    target = target_for(postgres, databases=[db])
    backup_component("postgres", target=target, store=store)
    admin = target_for(postgres)
    exec_in(admin, "postgres", f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS false')
    try:
        state = restore_drill(
            components=["postgres"], targets={"postgres": target}, store=store, return_state=True
        )
        accepted = restore_drill(
            components=["postgres"],
            targets={"postgres": target},
            store=store,
            fail_on_production_change=False,
        )
    finally:
        exec_in(admin, "postgres", f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS true')
    assert state.is_failed(), state.message
    from tasks.operations.drills import list_drill_records

    record = list_drill_records(store)[-2]
    pg = record.component("postgres")
    assert not record.passed and pg.status is Status.failed
    assert "isolation unchecked" in pg.reason and "production state unknown" in pg.reason
    # the restore itself was fine: with the check waived the drill passes, saying it was not run
    assert accepted.passed and accepted.component("postgres").status is Status.verified
    assert "production state unknown" in accepted.component("postgres").reason
