"""S3 Object Lock requests: the bucket's lock configuration, one object version's retention,
setting it where a server ignored the write's lock headers, and which version of each key is
current. Bytes and S3 facts only; tasks/storage/object_lock.py decides what they mean."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tasks.errors import ConfigurationError
from tasks.storage.backends.s3_errors import error_code, s3_error, s3_errors

DELETE_MARKER = "(delete marker)"  # current_versions(): the key's newest entry is a delete marker


@dataclass(frozen=True)
class BucketLock:
    """What the bucket says about versioning and Object Lock."""

    bucket: str
    versioning: str  # "Enabled", "Suspended" or "" (never enabled)
    lock_enabled: bool
    default_mode: str | None = None  # the bucket's default retention, if it has one
    default_days: int | None = None

    def describe(self) -> str:
        default = (
            f"default retention {self.default_mode} {self.default_days} days"
            if self.default_mode
            else "no default retention"
        )
        lock = f"object lock enabled, {default}" if self.lock_enabled else "object lock NOT enabled"
        return f"bucket {self.bucket}: versioning {self.versioning or 'never enabled'}, {lock}"


def ceil_second(when: datetime) -> datetime:
    """S3 keeps retain-until dates to the second: round up so a lock is never a moment short."""
    when = when.astimezone(UTC)
    return when.replace(microsecond=0) + (timedelta(seconds=1) if when.microsecond else timedelta())


def bucket_lock(client: Any, bucket: str) -> BucketLock:
    with s3_errors(bucket):
        versioning = client.get_bucket_versioning(Bucket=bucket).get("Status", "")
    try:
        conf = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except Exception as exc:
        if error_code(exc) != "ObjectLockConfigurationNotFoundError":
            raise s3_error(exc, bucket) from None
        conf = {}
    rule = conf.get("Rule", {}).get("DefaultRetention", {})
    days = rule.get("Days") or 0
    days += 365 * (rule.get("Years") or 0)  # S3 counts a default year as 365 days
    return BucketLock(
        bucket=bucket,
        versioning=versioning,
        lock_enabled=conf.get("ObjectLockEnabled") == "Enabled",
        default_mode=rule.get("Mode"),
        default_days=days or None,
    )


def retention_of(
    client: Any, bucket: str, key: str, version_id: str | None = None
) -> tuple[str | None, datetime | None, str | None, bool]:
    """(mode, retain-until, version id, legal hold on) of `key` (its current version unless
    `version_id`). One HEAD."""
    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id:
        args["VersionId"] = version_id
    with s3_errors(bucket, key):
        head = client.head_object(**args)
    held = head.get("ObjectLockLegalHoldStatus") == "ON"
    return head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate"), head.get("VersionId"), held


def ensure_retention(
    client: Any, bucket: str, key: str, version_id: str | None, mode: str, until: datetime
) -> str | None:
    """Make sure the version is locked in `mode` until at least `until`; returns its version id.

    A lock may only be lengthened, never shortened nor weakened (a running COMPLIANCE lock stays
    COMPLIANCE when GOVERNANCE is asked), so this is safe to repeat. It also covers
    servers that accept the lock headers of a write and then do not keep them (moto's multipart
    uploads): the lock is read back, set when missing or short, and read back again."""
    until = ceil_second(until)
    have_mode, have_until, version_id, _ = retention_of(client, bucket, key, version_id)
    if have_mode == "COMPLIANCE" and have_until is not None and have_until > datetime.now(UTC):
        # never weakened: S3 refuses COMPLIANCE -> GOVERNANCE while it runs (a server that
        # accepts it would let s3:BypassGovernanceRetention delete the version): it is lengthened
        # as COMPLIANCE, and one already long enough is left as it is
        mode = "COMPLIANCE"
    if have_mode == mode and have_until is not None and have_until >= until:
        return version_id
    with s3_errors(bucket, key):
        client.put_object_retention(
            Bucket=bucket,
            Key=key,
            VersionId=version_id,
            Retention={"Mode": mode, "RetainUntilDate": until},
        )
    have_mode, have_until, *_ = retention_of(client, bucket, key, version_id)
    if have_mode != mode or have_until is None or have_until < until:
        raise ConfigurationError(
            f"s3://{bucket}/{key} is not locked as asked ({mode} until {until.isoformat()}; the server "
            f"reports {have_mode} until {have_until}): the S3 server does not implement Object Lock. "
            "Use one that does, or unset object_lock_mode on the store block"
        )
    return version_id


def key_versions(client: Any, bucket: str, prefix: str) -> dict[str, list[str]]:
    """Every key under the folder `prefix` -> its version ids, the current one first
    (DELETE_MARKER for a delete marker). One paginated listing."""
    entries: dict[str, list[tuple[bool, datetime, str]]] = {}
    with s3_errors(bucket, prefix):
        pages = client.get_paginator("list_object_versions").paginate(
            Bucket=bucket, Prefix=prefix.rstrip("/") + "/"
        )
        for page in pages:
            for v in page.get("Versions", []):
                entries.setdefault(v["Key"], []).append((v["IsLatest"], v["LastModified"], v["VersionId"]))
            for m in page.get("DeleteMarkers", []):
                entries.setdefault(m["Key"], []).append((m["IsLatest"], m["LastModified"], DELETE_MARKER))
    return {
        k: [vid for *_, vid in sorted(e, key=lambda x: (x[0], x[1]), reverse=True)]
        for k, e in entries.items()
    }
