"""Round trip, the way WAL-G and pgBackRest test themselves: a cluster that uses every kind of object
and property a real application uses -> backup -> damage -> restore -> `pg_dumpall` before and after
identical, in place and into an empty cluster. Normalised only for what legitimately differs:
pg_dump's per-run `\\restrict` key, and (into another cluster) the connecting superuser's password,
which a restore deliberately leaves as it is on the target. The kept `__rollback_` copies refuse
connections, so pg_dumpall leaves them out by itself (asserted)."""

from __future__ import annotations

import difflib
import re
import secrets
import shutil

import pytest

import tasks.components.postgres as pg
from sandbox import services
from tasks.components.postgres.common import connect, engine_env, parse_aside
from tasks.proc import run
from tasks.storage.session import backup_session
from tests.pg_helpers import db_names, drop, dump_lines, exec_in, make_db, new_name, scalar, target_for

ROLES = """
CREATE ROLE app_owner LOGIN CREATEDB PASSWORD 'owner-pw' VALID UNTIL '2031-01-01 00:00:00+00';
CREATE ROLE app_rw NOLOGIN;
CREATE ROLE app_ro NOLOGIN NOINHERIT;
CREATE ROLE granter LOGIN;
CREATE ROLE reporter LOGIN CONNECTION LIMIT 3 IN ROLE app_ro;
CREATE ROLE "Ünïcode Rôle" LOGIN REPLICATION BYPASSRLS PASSWORD 'ü-pw';
GRANT app_rw TO app_owner WITH ADMIN OPTION;
GRANT app_ro TO "Ünïcode Rôle";
ALTER ROLE reporter SET work_mem = '16MB';
ALTER ROLE app_owner SET statement_timeout = '5s';
ALTER ROLE ALL SET klb_test.everyone = 'on';
COMMENT ON ROLE app_ro IS 'read only — lecture seule';
CREATE ROLE "o'brien" LOGIN;
ALTER ROLE granter SET search_path = E'"a\\nCREATE ROLE pwn;\\nb"';
COMMENT ON ROLE app_rw IS E'rotated\\nALTER ROLE postgres WITH SUPERUSER PASSWORD ''x'';\\nCREATE ROLE pwn;';
"""

DATABASES = """
CREATE DATABASE shop OWNER app_owner;
CREATE DATABASE "Ünï db" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'fr-FR'
    LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' OWNER "Ünïcode Rôle";
CREATE DATABASE tmpl_app OWNER app_owner;
REVOKE CONNECT, TEMPORARY ON DATABASE shop FROM PUBLIC;
GRANT CONNECT ON DATABASE shop TO app_rw;
GRANT CONNECT, TEMPORARY ON DATABASE shop TO app_ro WITH GRANT OPTION;
GRANT CREATE ON DATABASE shop TO granter WITH GRANT OPTION;
SET SESSION AUTHORIZATION granter;
GRANT CREATE ON DATABASE shop TO reporter;
RESET SESSION AUTHORIZATION;
ALTER DATABASE shop CONNECTION LIMIT 50;
COMMENT ON DATABASE shop IS 'the shop — ünïcode ✓';
ALTER DATABASE shop SET search_path = app, public;
ALTER DATABASE shop SET work_mem = '8MB';
ALTER DATABASE shop SET "DateStyle" = 'SQL, DMY';
ALTER ROLE reporter IN DATABASE shop SET statement_timeout = '1min';
ALTER ROLE app_owner IN DATABASE shop SET search_path = "$user", app;
REVOKE ALL ON DATABASE "Ünï db" FROM PUBLIC;
REVOKE ALL ON DATABASE "Ünï db" FROM "Ünïcode Rôle";
GRANT CONNECT ON DATABASE "Ünï db" TO reporter;
ALTER DATABASE tmpl_app IS_TEMPLATE true;
COMMENT ON DATABASE tmpl_app IS 'a template of our own';
"""

SHOP = """
CREATE EXTENSION pgcrypto;
CREATE EXTENSION hstore;
CREATE EXTENSION citext;
CREATE SCHEMA app AUTHORIZATION app_owner;
GRANT CREATE ON SCHEMA public TO app_rw;
CREATE COLLATION app.german (provider = icu, locale = 'de-DE');
CREATE COLLATION app.nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN app.email AS citext CHECK (VALUE ~ '@');
CREATE TYPE app.price AS (amount numeric(12, 2), currency char(3));
CREATE SEQUENCE app.order_no START 1000 INCREMENT 7;
CREATE TABLE app.customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email app.email UNIQUE,
    name text COLLATE app.german,
    handle text COLLATE app.nocase,
    mood app.mood,
    attrs hstore,
    secret bytea,
    balance app.price,
    created timestamptz DEFAULT '2026-01-02 03:04:05+00');
INSERT INTO app.customers (email, name, handle, mood, attrs, secret, balance)
SELECT 'u' || i || '@example.org', (ARRAY['Zoë', '日本語', 'Ærøskøbing', '🙂 smile', 'plain'])[1 + i % 5],
       'H' || i, (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::app.mood, hstore('k', i::text),
       digest(i::text, 'sha256'), ROW(i * 1.5, 'EUR')::app.price
FROM generate_series(1, 500) i;
CREATE TABLE app.orders (id bigint DEFAULT nextval('app.order_no'), customer bigint
    REFERENCES app.customers, placed date NOT NULL, total numeric, PRIMARY KEY (id, placed))
    PARTITION BY RANGE (placed);
CREATE TABLE app.orders_2025 PARTITION OF app.orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE app.orders_2026 PARTITION OF app.orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO app.orders (customer, placed, total)
SELECT 1 + i % 500, date '2025-06-01' + (i % 300), i / 3.0 FROM generate_series(1, 2000) i;
CREATE TABLE app.audit (at timestamptz DEFAULT now(), what text);
CREATE FUNCTION app.audit_trg() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = app, pg_catalog AS $$
BEGIN INSERT INTO app.audit (what) VALUES (TG_OP || ' ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER customers_audit AFTER INSERT OR UPDATE ON app.customers
    FOR EACH ROW EXECUTE FUNCTION app.audit_trg();
CREATE PROCEDURE app.cheer(n int) LANGUAGE sql AS $$ UPDATE app.customers SET mood = 'happy' WHERE id <= n $$;
CALL app.cheer(3);
CREATE VIEW app.happy AS SELECT id, name FROM app.customers WHERE mood = 'happy';
CREATE MATERIALIZED VIEW app.totals AS SELECT customer, sum(total) AS total FROM app.orders GROUP BY 1;
CREATE INDEX customers_lower_name ON app.customers (lower(name));
SELECT lo_from_bytea(424242, convert_to('a large object — ünï', 'UTF8'));
ALTER LARGE OBJECT 424242 OWNER TO app_owner;
GRANT SELECT ON LARGE OBJECT 424242 TO app_ro;
COMMENT ON TABLE app.customers IS 'people — ünï';
COMMENT ON COLUMN app.customers.email IS 'primary contact';
ALTER TABLE app.customers ENABLE ROW LEVEL SECURITY;
CREATE POLICY cheerful ON app.customers FOR SELECT TO app_ro USING (mood <> 'sad');
GRANT USAGE ON SCHEMA app TO app_ro, app_rw;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO app_ro;
GRANT SELECT (id, name), UPDATE (name) ON app.customers TO reporter;
GRANT INSERT, UPDATE, DELETE ON app.orders TO app_rw;
GRANT USAGE ON SEQUENCE app.order_no TO app_rw;
REVOKE EXECUTE ON FUNCTION app.audit_trg() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.audit_trg() TO app_rw;
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA app GRANT SELECT ON TABLES TO app_ro;
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
CREATE TABLE public."Ünï Tablé" ("çolumn ✓" text COLLATE app.german, n int);
INSERT INTO public."Ünï Tablé" SELECT chr(19968 + i) || ' ✓', i FROM generate_series(1, 50) i;
ALTER TABLE app.customers OWNER TO app_owner;
ALTER TABLE app.orders OWNER TO app_owner;
ALTER TABLE app.customers FORCE ROW LEVEL SECURITY;
ALTER TABLE app.orders_2025 ADD CONSTRAINT big_enough CHECK (total > 100) NOT VALID;
CREATE UNLOGGED TABLE app.cache (k text PRIMARY KEY, v text);
INSERT INTO app.cache SELECT 'k' || i, repeat('v', i) FROM generate_series(1, 20) i;
CREATE MATERIALIZED VIEW app.later AS SELECT customer FROM app.orders WITH NO DATA;
CREATE SEQUENCE app.countdown INCREMENT -1;
SELECT nextval('app.countdown') FROM generate_series(1, 4);
CREATE SEQUENCE app.unused;
CREATE TABLE app.odd (n numeric, twice numeric GENERATED ALWAYS AS (n * 2) STORED, f float8, r real,
    t text, c char(4), a int[], j json, tz timetz, ts timestamptz, iv interval, b bit varying);
INSERT INTO app.odd (n, f, r, t, c, a, j, tz, ts, iv, b) VALUES
    (1.50, '-0', 'NaN', '', 'ab  ', '[0:1]={1,2}', '{"b": 1, "a": 2}', '12:00+05:30',
     '1999-12-31 23:59:59.999999+14', '1 day 25:00:00', B'101'),
    (NULL, 'Infinity', '-0', NULL, NULL, '{}', '[]', NULL, 'infinity', '-1 mon', B''),
    ('NaN', 1e308, 1.17549435e-38, ' trailing  ', 'x', '{{1,NULL},{3,4}}', 'null', '00:00-15:59',
     '0001-01-01 00:00:00+00 BC', '0', NULL);
CREATE FUNCTION app.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
    $$ BEGIN INSERT INTO app.audit (what) VALUES ('ddl ' || tg_tag); END $$;
CREATE EVENT TRIGGER app_ddl ON ddl_command_end EXECUTE FUNCTION app.log_ddl();
ALTER EVENT TRIGGER app_ddl DISABLE;
CREATE EVENT TRIGGER app_ddl_live ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
    EXECUTE FUNCTION app.log_ddl();
CREATE PUBLICATION shop_pub FOR TABLE app.customers, app.orders WITH (publish = 'insert, update');
CREATE PUBLICATION shop_all FOR ALL TABLES;
"""

TEMPLATE1 = """
CREATE EXTENSION citext;
CREATE TABLE public.seeded (k citext PRIMARY KEY, v text);
INSERT INTO public.seeded VALUES ('Default', 'every new database starts with this');
"""
TEMPLATE1_PROPERTIES = """
REVOKE TEMPORARY ON DATABASE template1 FROM PUBLIC;
GRANT CREATE ON DATABASE template1 TO app_owner;
ALTER DATABASE template1 SET work_mem = '5MB';
COMMENT ON DATABASE template1 IS 'our seed';
"""

UNICODE_DB = """
CREATE TABLE mots (mot text, n int);
INSERT INTO mots SELECT 'été ' || i, i FROM generate_series(1, 100) i;
"""


def _pg_dumpall(target) -> list[str]:
    with engine_env(target) as env:
        out = run([pg.common.tool(target, "pg_dumpall"), "--no-password"], env, name="pg_dumpall")
    return dump_lines(out)


def _without_password_of(lines: list[str], user: str) -> list[str]:
    return [re.sub(r" PASSWORD '[^']*'", "", x) if x.startswith(f"ALTER ROLE {user} ") else x for x in lines]


def _diff(before: list[str], after: list[str]) -> list[str]:
    return [x for x in difflib.unified_diff(before, after, lineterm="", n=0) if x[:1] in "+-"]


def _cluster(request, name):
    try:
        svc = services.start_postgres(secrets.token_hex(16), f"{name}-{secrets.token_hex(3)}")
    except services.ServiceMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    request.addfinalizer(svc.stop)
    return svc


@pytest.fixture(scope="module")
def broad(request, tmp_path_factory):
    """Cluster A built broadly, its pg_dumpall, and a whole-cluster backup of it."""
    from blocks.store import LocalStore

    # every table in parts (table_parts.py), however small: loaded side by side, back exactly
    source = target_for(_cluster(request, "pg-broad"), split_tables_from_mib=0)
    with connect(source, "postgres", autocommit=True, own_settings=False) as conn:
        for statement in (ROLES + DATABASES).split(";\n")[:-1]:  # one by one: CREATE DATABASE
            conn.execute(statement)
    exec_in(source, "shop", SHOP)
    exec_in(source, "Ünï db", UNICODE_DB)
    exec_in(source, "postgres", 'ALTER DATABASE "Ünï db" SET default_transaction_read_only = on')
    # template1, made after the others (it seeds every database created later): pg_dumpall has it
    exec_in(source, "template1", TEMPLATE1)
    for statement in TEMPLATE1_PROPERTIES.split(";\n")[:-1]:
        exec_in(source, "postgres", statement)
    before = _pg_dumpall(source)
    assert any("REVOKE CONNECT,TEMPORARY ON DATABASE shop FROM PUBLIC" in x for x in before)
    assert any("ALTER ROLE reporter IN DATABASE shop SET statement_timeout" in x for x in before)
    store = LocalStore(path=str(tmp_path_factory.mktemp("roundtrip-store")))
    with backup_session(store, "postgres") as session:
        pg.backup(source, session)
        session.commit()
    assert {"postgres", "shop", "Ünï db", "tmpl_app", "template1"} <= set(
        session.manifest.engine["databases"]
    )
    in_parts = {t["table"] for t in session.manifest.engine["databases"]["shop"]["table_parts"]}
    assert {"customers", "orders_2025", "odd", "cache", "Ünï Tablé"} <= in_parts
    return source, before, session.manifest, store


def test_round_trip_in_place_gives_back_an_identical_pg_dumpall(broad):
    source, before, manifest, store = broad
    # damage at every level: data, schema, database ACL/settings/comment, role attributes
    exec_in(source, "shop", "DELETE FROM app.orders WHERE id % 3 = 0; DROP VIEW app.happy")
    exec_in(
        source, "shop", "UPDATE app.customers SET name = 'x' WHERE id < 10; SELECT nextval('app.order_no')"
    )
    exec_in(
        source, "shop", "SELECT lo_unlink(424242); REVOKE SELECT (id, name) ON app.customers FROM reporter"
    )
    exec_in(source, "template1", "DELETE FROM public.seeded")
    for statement in (
        "GRANT ALL ON DATABASE shop TO PUBLIC",
        "ALTER DATABASE shop RESET ALL",
        "ALTER ROLE reporter IN DATABASE shop RESET ALL",
        "COMMENT ON DATABASE shop IS NULL",
        "ALTER DATABASE shop CONNECTION LIMIT -1",
        'DROP DATABASE "Ünï db"',
        "ALTER DATABASE tmpl_app IS_TEMPLATE false",
        "ALTER ROLE reporter NOLOGIN CONNECTION LIMIT -1",
        "GRANT ALL ON DATABASE template1 TO PUBLIC",
        "ALTER DATABASE template1 RESET ALL",
        'REVOKE app_ro FROM "Ünïcode Rôle"',
    ):
        exec_in(source, "postgres", statement)
    assert _diff(before, _pg_dumpall(source))

    report = pg.restore(source, manifest, store, pg.RestoreOptions())

    after = _pg_dumpall(source)
    assert _diff(before, after) == []
    kept = [d for d in db_names(source) if parse_aside(d)]
    assert {parse_aside(d)[0] for d in kept} == {"postgres", "shop", "tmpl_app", "template1"}  # not "Ünï db"
    assert not any("__rollback_" in line for line in after)
    assert report["databases"]["shop"]["fingerprint_equal"] is True
    # what the issue saw widen: PUBLIC may not connect to shop again
    assert scalar(source, "postgres", "SELECT has_database_privilege('public', 'shop', 'CONNECT')") is False


def test_round_trip_into_an_empty_cluster_gives_back_an_identical_pg_dumpall(request, broad):
    _, before, manifest, store = broad
    empty = target_for(_cluster(request, "pg-empty"))

    pg.restore(empty, manifest, store, pg.RestoreOptions())

    after = _pg_dumpall(empty)
    assert _diff(_without_password_of(before, "postgres"), _without_password_of(after, "postgres")) == []
    # the role's own password came along (its SCRAM verifier, byte for byte)
    assert [x for x in before if x.startswith("ALTER ROLE app_owner ")] == [
        x for x in after if x.startswith("ALTER ROLE app_owner ")
    ]
    assert scalar(empty, "shop", "SHOW DateStyle") == "SQL, DMY"
    # not in pg_dumpall's output (so not in the comparison above): every role's settings
    assert scalar(empty, "shop", "SHOW klb_test.everyone") == "on"
    assert scalar(empty, "Ünï db", "SHOW default_transaction_read_only") == "on"
    # and a database created on it now starts from the backup's template1
    exec_in(empty, "postgres", "CREATE DATABASE fresh")
    assert scalar(empty, "fresh", "SELECT v FROM public.seeded WHERE k = 'DEFAULT'") == (
        "every new database starts with this"
    )


def test_a_database_in_its_own_tablespace_comes_back_in_it(postgres, local_store):
    admin_target = target_for(postgres)
    space, db = new_name("ts"), new_name()
    location = postgres.workdir / space
    location.mkdir()
    shutil.chown(location, "postgres")
    exec_in(admin_target, "postgres", f"CREATE TABLESPACE {space} LOCATION '{location}'")
    exec_in(admin_target, "postgres", f"CREATE DATABASE {db} TABLESPACE {space}")
    exec_in(admin_target, db, "CREATE TABLE t AS SELECT generate_series(1, 100) AS i")
    target, store = target_for(postgres, databases=[db]), local_store()
    where = """SELECT t.spcname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace
               WHERE d.datname = %s"""
    try:
        with backup_session(store, "postgres") as session:
            pg.backup(target, session)
            session.commit()
        drop(admin_target, db)
        pg.restore(target, session.manifest, store, pg.RestoreOptions())  # globals: ts kept
        assert scalar(admin_target, "postgres", where, (db,)) == space
        assert scalar(admin_target, db, "SELECT count(*) FROM t") == 100
        # gone with its database: made again before the load, from the backup's globals
        drop(admin_target, db, *[d for d in db_names(admin_target) if d.startswith(db + "__")])
        exec_in(admin_target, "postgres", f"DROP TABLESPACE {space}")
        pg.restore(target, session.manifest, store, pg.RestoreOptions(include_globals=True))
        assert scalar(admin_target, "postgres", where, (db,)) == space
    finally:
        drop(admin_target, *[d for d in db_names(admin_target) if d == db or d.startswith(db + "__")])
        exec_in(admin_target, "postgres", f"DROP TABLESPACE IF EXISTS {space}")


def test_properties_follow_a_renamed_restore_and_no_owner_keeps_the_role_free_ones(postgres, local_store):
    admin_target, role, db = target_for(postgres), new_name("r"), new_name()
    exec_in(admin_target, "postgres", f"CREATE ROLE {role} LOGIN")
    make_db(admin_target, db, owner=role)
    for statement in (
        f"REVOKE CONNECT ON DATABASE {db} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {db} TO pg_read_all_data",
        f"ALTER DATABASE {db} SET work_mem = '3MB'",
        f"ALTER ROLE {role} IN DATABASE {db} SET statement_timeout = '7s'",
        f"COMMENT ON DATABASE {db} IS 'kept'",
        f"ALTER DATABASE {db} CONNECTION LIMIT 9",
    ):
        exec_in(admin_target, "postgres", statement)
    target, store = target_for(postgres, databases=[db]), local_store()
    props = "SELECT datacl::text, datconnlimit, shobj_description(oid, 'pg_database') FROM pg_database"
    role_settings = """SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d
                       ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole <> 0"""
    copy, bare = db + "_copy", db + "_bare"
    try:
        with backup_session(store, "postgres") as session:
            pg.backup(target, session)
            session.commit()
        options = pg.RestoreOptions(rename_to={db: copy}, include_globals=False)
        pg.restore(target, session.manifest, store, options)
        with connect(admin_target, "postgres") as conn:
            rows = {n: conn.execute(props + " WHERE datname = %s", (n,)).fetchone() for n in (db, copy)}
            assert rows[copy] == rows[db] and "pg_read_all_data=c/" in rows[copy][0]
            assert conn.execute(role_settings, (copy,)).fetchone() == (["statement_timeout=7s"],)
        assert scalar(admin_target, copy, "SHOW work_mem") == "3MB"

        options = pg.RestoreOptions(rename_to={db: bare}, include_globals=False, no_owner=True)
        pg.restore(target, session.manifest, store, options)
        with connect(admin_target, "postgres") as conn:
            acl, limit, comment = conn.execute(props + " WHERE datname = %s", (bare,)).fetchone()
            assert (acl, limit, comment) == (None, 9, "kept")  # no roles needed: the ACL is not
            assert conn.execute(role_settings, (bare,)).fetchone() is None
        assert scalar(admin_target, bare, "SHOW work_mem") == "3MB"
    finally:
        drop(admin_target, db, copy, bare)
        exec_in(admin_target, "postgres", f"DROP ROLE IF EXISTS {role}")
