"""The faster restore keeps its guarantees: a restore of some databases reads the backup once
(checked as it streams into the side database), so damage must still be refused before any
cut-over; the v2 fingerprint must still catch a missing row, a changed value, a missing table;
and backups fingerprinted with v1 must still restore, checked with v1."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

import tasks.components.postgres as pg
from tasks.components.postgres.fingerprint import (
    FINGERPRINT_ALGORITHM,
    V2_AT_ROOT,
    V2_OWN_ROWS,
    V3,
    V4,
    V5,
    V6,
    fingerprint_database,
    recorded_algorithm,
)
from tasks.components.postgres.fingerprint_diff import diff_fingerprints
from tasks.errors import IntegrityError
from tests.pg_helpers import db_names, drop, exec_in, make_db, new_name, state, target_for
from tests.test_postgres import take_backup

V1 = "rows+sum64(md5(row::text))/v1"
V2 = "rows+sum64(hashtextextended(row::text,0))/v2"


@pytest.fixture
def sample(postgres):
    name = new_name()
    admin_target = target_for(postgres)
    make_db(admin_target, name)
    yield target_for(postgres, databases=[name]), name
    drop(admin_target, *[d for d in db_names(admin_target) if d == name or d.startswith(name + "__")])


def _flip_middle(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


def _flip_last(data: bytes) -> bytes:  # after everything pg_restore needs has gone through
    out = bytearray(data)
    out[-1] ^= 0x01
    return bytes(out)


DAMAGES = {
    "flip-middle": _flip_middle,
    "flip-last-byte": _flip_last,
    "truncated": lambda d: d[:-100],
    "extended": lambda d: d + b"\0" * 10,
}


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damage_is_refused_by_the_one_read_restore_before_cut_over(sample, local_store, damage, compression):
    target, db = sample
    store = local_store(compression=compression)
    manifest = take_backup(target, store)
    exec_in(target, db, "DELETE FROM public.logs WHERE msg < '5'")
    changed = state(target, db)
    names = db_names(target)
    obj = manifest.object(manifest.engine["databases"][db]["object"])
    path = Path(store.path) / obj.key
    path.write_bytes(DAMAGES[damage](path.read_bytes()))

    # one database, no globals, no quiescing: the restore reads the object only once
    with pytest.raises(IntegrityError, match=obj.key):
        pg.restore(target, manifest, store, pg.RestoreOptions(databases=[db]))
    assert state(target, db) == changed
    assert db_names(target) == names  # the side database is gone too


def test_the_one_read_restore_brings_back_exactly_the_backup(sample, local_store):
    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    exec_in(target, db, "DELETE FROM app.items WHERE id % 3 = 0; DROP TABLE public.logs")
    report = pg.restore(target, manifest, store, pg.RestoreOptions(databases=[db]))
    assert report["databases"][db]["fingerprint_equal"] is True
    assert state(target, db)["tables"] == manifest.fingerprint["databases"][db]["tables"]
    assert manifest.fingerprint["algorithm"] == FINGERPRINT_ALGORITHM


@pytest.mark.parametrize(
    "algorithm", [V1, V2, V2_AT_ROOT, V2_OWN_ROWS, V3, V4, V5, V6, FINGERPRINT_ALGORITHM]
)
def test_fingerprint_catches_a_missing_row_a_changed_value_and_a_missing_table(sample, algorithm):
    target, db = sample
    before = fingerprint_database(target, db, algorithm)
    changes = [
        ("DELETE FROM app.items WHERE id = 17", "table app.items"),
        ("UPDATE app.items SET ratio = ratio + 1e-9 WHERE id = 18", "table app.items"),
        ("UPDATE app.items SET blob = NULL WHERE id = 19", "table app.items"),
        # a row swapped for another with the same count: only the checksum can tell
        (
            "UPDATE public.logs SET msg = msg || 'x' WHERE ctid = (SELECT min(ctid) FROM public.logs)",
            "table public.logs",
        ),
        ("DROP TABLE public.logs", "table public.logs missing after restore"),
    ]
    for statement, expected in changes:
        exec_in(target, db, statement)
        diff = diff_fingerprints(before, fingerprint_database(target, db, algorithm))
        assert any(expected in line for line in diff), (statement, diff)
        before = fingerprint_database(target, db, algorithm)


@pytest.mark.parametrize("algorithm", [V2, V5, FINGERPRINT_ALGORITHM])
def test_fingerprint_catches_changes_that_equality_would_hide(sample, algorithm):
    """v3 hashes a column by its type only where equality is byte identity: a value equal but
    not identical (numeric scale, float sign of zero, json spacing, a domain's numeric, text under
    a case-insensitive collation) still changes the fingerprint."""
    target, db = sample
    exec_in(
        target,
        db,
        "CREATE DOMAIN public.money2 AS numeric; "
        "CREATE TABLE public.eq (id int, n numeric, f float8, j json, d public.money2, t text, v varchar); "
        "INSERT INTO public.eq VALUES (1, 1.0, 0, '{\"a\": 1}', 2.0, 'abc', 'abc')",
    )
    changes = [
        "UPDATE public.eq SET n = 1.00",
        "UPDATE public.eq SET f = '-0'",
        "UPDATE public.eq SET j = '{\"a\":1}'",
        "UPDATE public.eq SET d = 2.00",
        "UPDATE public.eq SET t = 'abd'",
        "UPDATE public.eq SET v = 'abd'",
        "ALTER TABLE public.eq DROP COLUMN f",
    ]
    before = fingerprint_database(target, db, algorithm)
    for statement in changes:
        exec_in(target, db, statement)
        after = fingerprint_database(target, db, algorithm)
        assert after["tables"]["public.eq"] != before["tables"]["public.eq"], statement
        before = after
    with contextlib.suppress(Exception):  # only where the server has ICU
        exec_in(
            target,
            db,
            "CREATE COLLATION public.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false); "
            "CREATE TABLE public.ci_t (t text COLLATE public.ci); INSERT INTO public.ci_t VALUES ('a')",
        )
    if (
        "public.ci_t" in before["tables"]
        or "public.ci_t" in fingerprint_database(target, db, algorithm)["tables"]
    ):
        before = fingerprint_database(target, db, algorithm)
        exec_in(target, db, "UPDATE public.ci_t SET t = 'A'")
        assert (
            fingerprint_database(target, db, algorithm)["tables"]["public.ci_t"]
            != before["tables"]["public.ci_t"]
        )


def test_fingerprint_tells_dotted_names_apart_and_sees_the_blanks_of_bpchar(sample, local_store):
    """v3 keyed a table `schema.name`: `a."b.c"` and `"a.b".c` were one key, so a change to one
    of them went unseen; and it hashed bpchar by its cast to text, which drops trailing blanks,
    so 'a' -> 'a ' in an unbounded bpchar (or a domain over one) went unseen too."""
    target, db = sample
    exec_in(
        target,
        db,
        'CREATE SCHEMA a; CREATE SCHEMA "a.b"; CREATE TABLE a."b.c" (x int); CREATE TABLE "a.b".c (x int); '
        'INSERT INTO a."b.c" VALUES (1); INSERT INTO "a.b".c VALUES (2); '
        "CREATE DOMAIN public.code AS bpchar; CREATE DOMAIN public.code2 AS public.code; "
        "CREATE TABLE public.bp (c bpchar, d public.code2, n char(3)); "
        "INSERT INTO public.bp VALUES ('a', 'a', 'a'), (NULL, NULL, NULL)",
    )
    before = fingerprint_database(target, db)
    assert {'a."b.c"', '"a.b".c', "public.bp"} <= set(before["tables"])
    changes = [
        ('UPDATE a."b.c" SET x = 9', 'a."b.c"'),
        ('UPDATE "a.b".c SET x = 9', '"a.b".c'),
        ("UPDATE public.bp SET c = 'a ' WHERE c = 'a'", "public.bp"),
        ("UPDATE public.bp SET d = 'a  ' WHERE d = 'a'", "public.bp"),
        ("UPDATE public.bp SET c = '' WHERE c IS NULL", "public.bp"),
    ]
    for statement, key in changes:
        exec_in(target, db, statement)
        after = fingerprint_database(target, db)
        assert any(f"table {key}:" in line for line in diff_fingerprints(before, after)), statement
        before = after
    # and such a database restores, checked with these keys and these values
    store = local_store()
    manifest = take_backup(target, store)
    copy = db + "_copy"  # the sample fixture drops it with `db`
    report = pg.restore(target, manifest, store, pg.RestoreOptions(rename_to={db: copy}))
    assert report["databases"][copy]["fingerprint_equal"] is True
    assert fingerprint_database(target, copy) == before


def test_fingerprint_covers_large_objects_and_a_restore_brings_them_back(sample, local_store):
    """pg_dump dumps large objects with the data; v3 left them out of the fingerprint, so a changed
    or missing one went unseen. v4 sums them by content, in 1 MiB pieces."""
    target, db = sample
    exec_in(
        target,
        db,
        "SELECT lo_from_bytea(4141, decode(repeat(md5('x'), 80000), 'hex')); "  # 1.28 MB: two pieces
        "SELECT lo_from_bytea(4242, 'small'); SELECT lo_create(4343)",
    )
    store = local_store()
    manifest = take_backup(target, store)
    assert manifest.fingerprint["databases"][db]["large_objects"]["count"] == 3
    copy = db + "_copy"  # the sample fixture drops it with `db`
    report = pg.restore(target, manifest, store, pg.RestoreOptions(rename_to={db: copy}))
    assert report["databases"][copy]["fingerprint_equal"] is True
    before = fingerprint_database(target, copy)
    assert before == manifest.fingerprint["databases"][db]
    for statement in (
        "SELECT lo_put(4242, 0, 'S')",
        "SELECT lo_put(4141, 1100000, 'z')",  # in the second piece
        "SELECT lo_unlink(4343)",  # an empty one
    ):
        exec_in(target, copy, statement)
        after = fingerprint_database(target, copy)
        assert any(line.startswith("large objects:") for line in diff_fingerprints(before, after)), statement
        before = after


def test_a_backup_fingerprinted_with_v1_restores_checked_with_v1(sample, local_store):
    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    # as a backup made before v2 recorded it: same data, v1 fingerprint
    v1 = {"algorithm": V1, "databases": {db: fingerprint_database(target, db, V1)}}
    old = manifest.model_copy(update={"fingerprint": v1})
    assert (
        recorded_algorithm(old.fingerprint) == V1
        and v1["databases"][db] != manifest.fingerprint["databases"][db]
    )
    report = pg.restore(target, old, store, pg.RestoreOptions(databases=[db], rename_to={db: db + "_v1"}))
    assert report["databases"][db + "_v1"]["fingerprint_equal"] is True
    drop(target, db + "_v1")

    # and a v1 fingerprint that does not match is still refused
    lie = {"algorithm": V1, "databases": {db: {**v1["databases"][db], "tables": {}}}}
    names = db_names(target)
    with pytest.raises(IntegrityError, match="not in the backup"):
        pg.restore(
            target, manifest.model_copy(update={"fingerprint": lie}), store, pg.RestoreOptions(databases=[db])
        )
    assert db_names(target) == names


def test_an_unknown_fingerprint_algorithm_is_refused_and_changes_nothing(sample, local_store):
    target, db = sample
    store = local_store()
    manifest = take_backup(target, store)
    exec_in(target, db, "DELETE FROM app.items")
    changed, names = state(target, db), db_names(target)
    odd = {**manifest.fingerprint, "algorithm": "rows+sum64(sha3(row))/v9"}
    with pytest.raises(IntegrityError, match="unknown to this version"):
        pg.restore(
            target, manifest.model_copy(update={"fingerprint": odd}), store, pg.RestoreOptions(databases=[db])
        )
    assert state(target, db) == changed and db_names(target) == names


def test_fingerprint_sees_values_moved_between_rows_and_bigints_a_fold_to_32_bits_confuses(sample):
    """v4 summed hash_record_extended over the rows, and that hash is linear in its columns'
    hashes (31 * h + next), so the sum is only per-column sums: two rows swapping an email (or a
    NULL, or two large objects swapping content) left it unchanged. And int8/timestamp(tz)
    columns were hashed by hashint8, which folds 64 bits to 32: 0 and 4294967297 hash alike."""
    target, db = sample
    exec_in(
        target,
        db,
        "CREATE TABLE public.acct (id int, email text, note text, big bigint, at timestamptz, ts timestamp); "
        "INSERT INTO public.acct VALUES "
        "(1, 'a@x', 'n', 0, '2000-01-01 00:00:00+00', '2000-01-01 00:00:00'), "
        "(2, 'b@x', NULL, 7, '2001-01-01 00:00:00+00', '2001-01-01 00:00:00'); "
        "SELECT lo_from_bytea(5151, 'aaa'); SELECT lo_from_bytea(5252, 'bbb')",
    )
    changes = [
        ("UPDATE public.acct SET email = CASE id WHEN 1 THEN 'b@x' ELSE 'a@x' END", "table public.acct"),
        ("UPDATE public.acct SET note = CASE id WHEN 1 THEN NULL ELSE 'n' END", "table public.acct"),
        ("UPDATE public.acct SET big = 4294967297 WHERE id = 1", "table public.acct"),  # 1 << 32 | 1
        # 4294967297 microseconds after 2000-01-01, PostgreSQL's epoch: the same 32-bit fold
        ("UPDATE public.acct SET at = at + interval '4294.967297 s' WHERE id = 1", "table public.acct"),
        ("UPDATE public.acct SET ts = ts + interval '4294.967297 s' WHERE id = 1", "table public.acct"),
        ("SELECT lo_put(5151, 0, 'bbb'), lo_put(5252, 0, 'aaa')", "large objects:"),
    ]
    before = fingerprint_database(target, db)
    for statement, expected in changes:
        exec_in(target, db, statement)
        after = fingerprint_database(target, db)
        assert any(expected in line for line in diff_fingerprints(before, after)), statement
        before = after


def test_a_descending_sequence_is_checked_the_way_it_counts(sample, local_store):
    """pg_dump reads a sequence when it reaches it, not at the snapshot, so a restored sequence may
    be ahead of the fingerprint's value, never behind. 'Ahead' of a descending sequence is lower:
    one the application used during the dump failed every restore of that backup as 'behind',
    and one truly behind (it would hand out ids again) passed."""
    target, db = sample
    exec_in(
        target,
        db,
        "CREATE SEQUENCE public.down INCREMENT -1; SELECT nextval('public.down') FROM generate_series(1, 3)",
    )
    store = local_store()
    manifest = take_backup(target, store)
    recorded = manifest.fingerprint["databases"][db]["sequences"]["public.down"]
    assert (recorded["last_value"], recorded["is_called"]) == (-3, True)

    def recorded_as(value: int):
        fp = manifest.fingerprint["databases"][db]
        seqs = {**fp["sequences"], "public.down": {**recorded, "last_value": value}}
        fingerprint = {**manifest.fingerprint, "databases": {db: {**fp, "sequences": seqs}}}
        return manifest.model_copy(update={"fingerprint": fingerprint})

    # the fingerprint read -2, then the application took -3, then pg_dump read -3: a sound backup
    options = pg.RestoreOptions(rename_to={db: db + "_copy"})  # the sample fixture drops it
    report = pg.restore(target, recorded_as(-2), store, options)
    assert report["databases"][db + "_copy"]["fingerprint_equal"] is True
    # recorded -4, restored -3: -4 would be handed out again
    names = db_names(target)
    with pytest.raises(IntegrityError, match="public.down.*behind"):
        pg.restore(target, recorded_as(-4), store, pg.RestoreOptions(rename_to={db: db + "_behind"}))
    assert db_names(target) == names
