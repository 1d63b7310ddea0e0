"""A backup role that is not a superuser (a managed server's admin) is subject to row-level
security: a policy that hides rows from it, or FORCE ROW LEVEL SECURITY on a table it owns, would
make the fingerprint and pg_dump read fewer rows and record them as the whole table. Every session
sets row_security=off, which makes such a read an error: the backup fails, never passes short."""

from __future__ import annotations

import secrets

import psycopg
import pytest

from tasks.components.postgres.common import conninfo_dbname, engine_env, tool
from tasks.components.postgres.fingerprint import fingerprint_database
from tasks.errors import ComponentFailed
from tasks.proc import run
from tests.pg_helpers import drop, exec_in, new_name, target_for


@pytest.mark.parametrize("how", ["policy", "forced_on_owner"])
def test_rows_hidden_by_row_security_fail_the_read_instead_of_shortening_it(postgres, how):
    admin_target, db, role = target_for(postgres), new_name(), new_name("dumper")
    password = secrets.token_hex(12)
    exec_in(admin_target, "postgres", f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    exec_in(admin_target, "postgres", f"CREATE DATABASE {db}")
    try:
        exec_in(
            admin_target,
            db,
            f"""CREATE TABLE t (v text); INSERT INTO t VALUES ('shown'), ('hidden');
                ALTER TABLE t ENABLE ROW LEVEL SECURITY;
                CREATE POLICY only_shown ON t USING (v <> 'hidden');
                GRANT SELECT ON t TO {role};""",
        )
        if how == "forced_on_owner":
            exec_in(
                admin_target, db, f"ALTER TABLE t OWNER TO {role}; ALTER TABLE t FORCE ROW LEVEL SECURITY"
            )
        dumper = target_for(postgres, user=role, password=password, databases=[db])
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            fingerprint_database(dumper, db)
        with engine_env(dumper, db) as env, pytest.raises(ComponentFailed, match="row-level security"):
            argv = [tool(dumper, "pg_dump"), "--section=data", "--table=public.t", "--no-password", "-d"]
            run([*argv, conninfo_dbname(db)], env, name="pg_dump")
    finally:
        drop(admin_target, db)
        exec_in(admin_target, "postgres", f"DROP ROLE {role}")
