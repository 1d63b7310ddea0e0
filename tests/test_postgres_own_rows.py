"""A parent of inheritance is fingerprinted by its own rows (v7: `FROM ONLY`), as pg_dump dumps it;
before, its sum read its children's rows too: each child's rows counted twice, and a row that
moved between parent and child left the parent's entry unchanged. Backups fingerprinted with v6
and before are still checked as they were recorded."""

from __future__ import annotations

import pytest

import tasks.components.postgres as pg
from tasks.components.postgres.fingerprint import (
    FINGERPRINT_ALGORITHM,
    V2_AT_ROOT,
    V2_OWN_ROWS,
    V6,
    fingerprint_database,
)
from tasks.components.postgres.fingerprint_diff import diff_fingerprints
from tests.pg_helpers import db_names, drop, exec_in, new_name, scalar, target_for
from tests.test_postgres import take_backup

HIERARCHY = """
CREATE TABLE parent (id int, v text);
CREATE TABLE child (extra int) INHERITS (parent);
CREATE TABLE grandchild () INHERITS (child);
INSERT INTO parent VALUES (1, 'p');
INSERT INTO child VALUES (2, 'c', 20), (3, 'c', 30);
INSERT INTO grandchild VALUES (4, 'g', 40);
"""


@pytest.fixture
def inherited(postgres):
    admin_target, name = target_for(postgres), new_name()
    exec_in(admin_target, "postgres", f"CREATE DATABASE {name}")
    exec_in(admin_target, name, HIERARCHY)
    yield admin_target, name
    drop(admin_target, *[d for d in db_names(admin_target) if d.startswith(name)])


@pytest.mark.parametrize("algorithm", [FINGERPRINT_ALGORITHM, V2_OWN_ROWS], ids=["v7", "v2-before-14"])
def test_a_parent_counts_its_own_rows_and_a_row_moved_to_a_child_names_it(inherited, algorithm):
    admin_target, db = inherited
    before = fingerprint_database(admin_target, db, algorithm)
    assert {k: v["rows"] for k, v in before["tables"].items()} == {
        "public.parent": 1,
        "public.child": 2,
        "public.grandchild": 1,
    }
    exec_in(admin_target, db, "DELETE FROM ONLY parent; INSERT INTO child VALUES (1, 'p', NULL)")
    diff = diff_fingerprints(before, fingerprint_database(admin_target, db, algorithm))
    assert any(line.startswith("table public.parent:") for line in diff), diff


@pytest.mark.parametrize("split", [None, 0], ids=["pg_dump", "parts"])
def test_an_inheritance_hierarchy_restores_with_each_table_its_own_rows(inherited, local_store, split):
    admin_target, db = inherited
    target = admin_target.model_copy(
        update={"databases": [db], "table_objects_from_mib": split, "split_tables_from_mib": split}
    )
    store = local_store()
    manifest = take_backup(target, store)
    assert manifest.fingerprint["algorithm"] == FINGERPRINT_ALGORITHM
    copy = f"{db}_c"
    options = pg.RestoreOptions(include_globals=False, rename_to={db: copy})
    report = pg.restore(target, manifest, store, options)
    assert report["databases"][copy]["fingerprint_equal"] is True
    for table, rows in (("parent", 1), ("child", 2), ("grandchild", 1)):
        assert scalar(admin_target, copy, f"SELECT count(*) FROM ONLY {table}") == rows


@pytest.mark.parametrize("algorithm", [V6, V2_AT_ROOT])
def test_a_backup_fingerprinted_before_v7_is_checked_with_its_children_as_before(
    inherited, local_store, algorithm
):
    admin_target, db = inherited
    target = admin_target.model_copy(update={"databases": [db]})
    store = local_store()
    manifest = take_backup(target, store)
    old_fp = fingerprint_database(admin_target, db, algorithm)
    assert old_fp["tables"]["public.parent"]["rows"] == 4  # as v6 recorded it: children included
    old = manifest.model_copy(update={"fingerprint": {"algorithm": algorithm, "databases": {db: old_fp}}})
    copy = f"{db}_c"
    options = pg.RestoreOptions(include_globals=False, rename_to={db: copy})
    report = pg.restore(target, old, store, options)
    assert report["databases"][copy]["fingerprint_equal"] is True
