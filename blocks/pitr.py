"""Where PostgreSQL PITR reads from: the server (for base backups and checks) and its WAL archive."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from blocks.postgres import PostgresTarget
from blocks.strict import without_credentials

_ARCHIVE_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._-]+)*/?$")


class PitrTarget(PostgresTarget):
    """A PostgreSQL server whose WAL is archived continuously by barman-cloud-wal-archive.

    Where the server is and how to log in are PostgresTarget's fields; these add the archive."""

    _block_type_name = "KLB PITR Target"
    _block_type_slug = "klb-pitr-target"
    _description = "PostgreSQL server + its WAL archive (barman-cloud layout) for point-in-time recovery."

    host: str = Field(default="127.0.0.1", description="server host (TCP; base backups use replication)")
    user: str = Field(default="postgres", description="a superuser or a user with REPLICATION")
    database: str = Field(default="postgres", description="database for checks and verification")
    server_name: str = Field(
        default="pg", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="SERVER_NAME in the archive"
    )
    archive_url: str = Field(description="barman-cloud destination, e.g. s3://bucket/pitr")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto)")
    region: str | None = Field(default=None, description="S3 region")
    aws_access_key_id: SecretStr | None = Field(default=None, description="archive read credentials")
    aws_secret_access_key: SecretStr | None = None

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return value if value is None else without_credentials(value)

    @field_validator("archive_url")
    @classmethod
    def _s3_url(cls, value: str) -> str:
        without_credentials(value)  # before the message below quotes it
        if not _ARCHIVE_URL.match(value):
            raise ValueError(f"archive_url {value!r} must look like s3://bucket/path")
        return value.rstrip("/")
