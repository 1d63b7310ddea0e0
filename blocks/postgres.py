"""Where a PostgreSQL server is, and how to log in. The password never leaves as argv or environment."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from blocks.strict import StrictBlock

# A database name we accept: printable, no NUL, at most 63 bytes (PostgreSQL's NAMEDATALEN-1).
_NAME = re.compile(r"^[^\x00-\x1f]{1,63}$")


def check_db_name(name: str) -> str:
    if not _NAME.match(name) or len(name.encode()) > 63:
        raise ValueError(f"{name!r} is not a valid PostgreSQL database name (1-63 bytes, no control chars)")
    return name


class PostgresTarget(StrictBlock):
    _block_type_name = "KLB Postgres Target"
    _block_type_slug = "klb-postgres-target"
    _description = "A PostgreSQL server to back up or restore into (logical dumps, one per database)."

    host: str = Field(default="127.0.0.1", description="host name or IP of the server")
    port: int = Field(default=5432, ge=1, le=65535)
    user: str = Field(default="postgres", description="a superuser (roles and all databases are dumped)")
    password: SecretStr | None = Field(
        default=None, description="engines read it from a private 0600 password file, never argv or env"
    )
    databases: list[str] = Field(
        default_factory=list,
        description="databases to back up; empty = every one that accepts connections, template1 too",
    )
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    maintenance_db: str = Field(default="postgres", description="database to connect to for admin work")
    bin_dir: str | None = Field(
        default=None, description="directory of pg_dump/pg_restore/psql (default: from PATH)"
    )
    connect_timeout: int = Field(default=10, ge=1, le=300)
    table_objects_from_mib: int | None = Field(
        default=32,
        ge=0,
        description="tables of at least this many MiB are backed up as objects of their own "
        "(COPY in the dump's snapshot), which a restore loads side by side; smaller ones go "
        "through pg_dump's one stream; empty: only split tables (below) have their own",
    )
    split_tables_from_mib: int | None = Field(
        default=256,
        ge=0,
        description="tables of at least this many MiB are backed up in parts (block ranges of "
        "the same snapshot), at least 4, which a restore loads in parallel; empty: never split",
    )
    restore_index_memory: str = Field(
        default="256MB",
        pattern=r"^[1-9][0-9]{0,6}(kB|MB|GB)$",
        description="maintenance_work_mem of each session that rebuilds indexes after a restore "
        "(one per parallel job): the server default (64MB) sorts a large index on disk",
    )

    @field_validator("databases")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            check_db_name(name)
        if len(set(names)) != len(names):
            raise ValueError(f"databases are listed twice: {names}")
        return names

    @field_validator("restore_index_memory")
    @classmethod
    def _index_memory(cls, value: str) -> str:
        # the server's own bounds (1MB .. 2147483647kB): refused here, not after a whole load
        number, unit = int(value[:-2]), value[-2:]
        kb = number * {"kB": 1, "MB": 1024, "GB": 1024 * 1024}[unit]
        if not 1024 <= kb <= 2147483647:
            raise ValueError(f"{value}: maintenance_work_mem takes 1MB to 2047GB")
        return value

    @field_validator("maintenance_db")
    @classmethod
    def _maint(cls, name: str) -> str:
        return check_db_name(name)

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"
