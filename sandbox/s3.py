"""S3 buckets and store blocks on a throwaway S3 server (moto), for the tests, the benches and
the demo: the one place a test bucket and its S3Store are made.

    name, client = make_bucket(moto.url)
    store = s3_store(moto.url, name, compression="gzip")
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

REGION = "us-west-2"
KEY_ID = "testing"  # moto accepts any credentials
SECRET = "testing"  # noqa: S105 - moto


def client(url: str, *, key_id: str = KEY_ID, secret: str = SECRET, region: str = REGION) -> Any:
    """A boto3 S3 client for the server at `url`."""
    import boto3

    return boto3.client(
        "s3", endpoint_url=url, region_name=region, aws_access_key_id=key_id, aws_secret_access_key=secret
    )


def make_bucket(
    url: str,
    bucket: str | None = None,
    *,
    key_id: str = KEY_ID,
    secret: str = SECRET,
    region: str = REGION,
    exist_ok: bool = False,
    object_lock: bool = False,
) -> tuple[str, Any]:
    """Create `bucket` (default: a fresh 'klb-<random>') in `region`; returns (name, client).
    `object_lock`: created with Object Lock enabled (which also turns versioning on)."""
    name = bucket or "klb-" + secrets.token_hex(6)
    s3 = client(url, key_id=key_id, secret=secret, region=region)
    where: dict[str, Any] = (
        {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    )
    if object_lock:
        where["ObjectLockEnabledForBucket"] = True
    with contextlib.suppress(*((s3.exceptions.BucketAlreadyOwnedByYou,) if exist_ok else ())):
        s3.create_bucket(Bucket=name, **where)
    return name, s3


def s3_store(
    url: str,
    bucket: str,
    *,
    key_id: str = KEY_ID,
    secret: str = SECRET,
    region: str = REGION,
    session_token: str | None = None,
    client_config: dict[str, Any] | None = None,
    **fields: Any,
):
    """An S3Store block for `bucket` on the server at `url`; `fields` are S3Store fields
    (prefix, compression, encryption_key, ...), `client_config` a botocore config dict."""
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from blocks.store import S3Store

    params = {"endpoint_url": url, **({"config": client_config} if client_config else {})}
    creds = AwsCredentials(
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=session_token,
        region_name=region,
        aws_client_parameters=AwsClientParameters(**params),
    )
    return S3Store(bucket=bucket, credentials=creds, **fields)
