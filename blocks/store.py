"""Store blocks: where backups go. Configuration only; tasks/storage/backends/ does the I/O."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Literal

from prefect_aws import AwsCredentials
from pydantic import AwareDatetime, Field, SecretStr, ValidationInfo, field_validator

from blocks.strict import StrictBlock


class Compression(StrEnum):
    zstd = "zstd"
    gzip = "gzip"
    none = "none"


class Encryption(StrEnum):
    none = "none"
    aes256gcm = "aes-256-gcm-stream"


DEFAULT_LOCAL_STORE = Path.home() / ".local/share/knative-lambda-backup/store"


def default_local_path() -> str:
    return os.environ.get("KLB_STORE_DIR") or str(DEFAULT_LOCAL_STORE)


class StoreBlock(StrictBlock):
    """Settings every store shares."""

    prefix: str = Field(
        default="backups",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$",
        description="key prefix: objects go to <prefix>/<component>/<YYYY-MM-DD>/<backup-id>/",
    )
    compression: Compression = Field(
        default=Compression.zstd,
        description="zstd is fast; gzip matches the runbook's manual `gunzip` commands",
    )
    compression_level: int | None = Field(
        default=None,
        ge=1,
        le=19,
        description="zstd: 1 (the default: fastest) to 19 (smallest); gzip: 1 to 9 (default 6)",
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        description="client-side AES-256-GCM key (any secret string). Lose it and the backups are lost.",
    )
    previous_encryption_keys: list[SecretStr] = Field(
        default_factory=list,
        description="older keys, for reading only: to rotate, move the current key here and set a new "
        "encryption_key (nothing is re-encrypted; each object names its key)",
    )
    unsigned_manifests_before: AwareDatetime | None = Field(
        default=None,
        description="with an encryption key, every manifest and record (drills, restores, recovery "
        "points) is signed and an unsigned one is refused (anyone who can write to the bucket could "
        "have made it). Those written before the store had a key, or by a version that did not sign, "
        "are unsigned too: set this to a time (with its time zone) to accept, with a warning, unsigned "
        "manifests and records whose id and times are all before it. Empty: none accepted "
        "(docs/operations.md, signed manifests)",
    )
    verify_after_write: bool = Field(
        default=True,
        description="read every object back and check sha256 before the manifest is written",
    )

    # Field validators, not a model validator: those would rename the block in Prefect's parameter
    # errors ("function-after[...]" instead of "LocalStore"). compression is declared first.
    @field_validator("compression_level")
    @classmethod
    def _level_fits_compression(cls, level: int | None, info: ValidationInfo) -> int | None:
        # refused here, not at the first backup: zlib fails on a level over 9 after the dump started
        compression = info.data.get("compression")
        if level is not None and compression is Compression.gzip and level > 9:
            raise ValueError(f"gzip takes compression_level 1 to 9, not {level}")
        if level is not None and compression is Compression.none:
            raise ValueError(
                "compression_level needs compression zstd or gzip: remove it, or set compression"
            )
        return level

    @property
    def location(self) -> str:
        raise NotImplementedError


class LocalStore(StoreBlock):
    """A directory: the embedded default, so everything runs with no cloud."""

    _block_type_name = "KLB Local Store"
    _block_type_slug = "klb-local-store"
    _description = "Backups in a local directory (or a mounted volume)."

    path: str = Field(default_factory=default_local_path, description="directory of the store")

    @property
    def location(self) -> str:
        return str(Path(self.path) / self.prefix)


class S3Store(StoreBlock):
    """An S3 (or S3-compatible) bucket, with server-side encryption on every object."""

    _block_type_name = "KLB S3 Store"
    _block_type_slug = "klb-s3-store"
    _description = "Backups in an S3 bucket: SSE on every object, multipart streaming uploads."

    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    credentials: AwsCredentials = Field(
        default_factory=AwsCredentials,
        description="prefect-aws credentials; aws_client_parameters.endpoint_url for S3-compatible servers",
    )
    server_side_encryption: Literal["AES256", "aws:kms"] = "AES256"
    kms_key_id: str | None = Field(default=None, description="KMS key for aws:kms")
    require_bucket_encryption: bool = Field(
        default=False,
        description="refuse to write unless the bucket has default encryption (objects carry SSE anyway)",
    )
    part_size_mib: int = Field(default=16, ge=5, le=512, description="multipart part size")
    max_concurrency: int = Field(default=4, ge=1, le=32, description="parts uploaded at once")
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = Field(
        default=None,
        description="S3 Object Lock on every object and manifest, retained until the backup's expiry "
        "(backup-table.yaml) plus object_lock_margin_days. COMPLIANCE: nobody can delete a locked "
        "version, not even the account root; GOVERNANCE: only a principal with "
        "s3:BypassGovernanceRetention can. The bucket needs versioning and object lock enabled "
        "(docs/operations.md).",
    )
    object_lock_margin_days: int = Field(
        default=1,
        ge=0,
        le=3650,
        description="days a locked backup stays locked past its expiry (clock skew, a late retention run)",
    )

    @field_validator("kms_key_id")
    @classmethod
    def _kms_key_needs_kms(cls, key: str | None, info: ValidationInfo) -> str | None:
        # S3 would encrypt with its own keys (AES256) and the key named here would go unused
        if key and info.data.get("server_side_encryption") != "aws:kms":
            raise ValueError(
                "kms_key_id needs server_side_encryption 'aws:kms': set it, or remove kms_key_id"
            )
        return key

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"
