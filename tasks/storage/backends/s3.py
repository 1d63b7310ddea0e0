"""An S3 (or S3-compatible) bucket as a store: multipart streaming uploads with SSE, resumable
downloads pinned to one object version. Every botocore error goes through s3_errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import cached_property
from typing import Any

from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
from urllib3.exceptions import HTTPError as Urllib3Error

from blocks.store import S3Store
from tasks.errors import ConfigurationError, TransientError
from tasks.storage.backends import s3_lock
from tasks.storage.backends.base import READ_CHUNK, Backend
from tasks.storage.backends.s3_errors import error_code, s3_error, s3_errors
from tasks.storage.backends.s3_upload import S3Upload

MAX_RESUMES = 5  # a download cut mid-body resumes this many times before it fails
RESUME_DELAY = 0.1  # seconds before the first resume; doubles each time, at most 2 s
log = logging.getLogger(__name__)
# a response body cut mid-way (connection dropped, reset, timed out while streaming)
_BODY_ERRORS = (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, Urllib3Error, ConnectionError)


# botocore data loaders by search path, one per process (_share_service_models)
_LOADERS: dict[tuple[str, ...], Any] = {}


def _share_service_models(session: Any) -> None:
    """Every store access makes a new boto3 session (the credentials block's), and each session's
    data loader parsed S3's JSON service model and endpoint data again: about 145 ms of CPU per
    client, a third of a busy Object Lock run. A loader only caches what it read from those files,
    which never change in a process, so the sessions of one process share one loader."""
    core = session._session  # the botocore session under boto3's
    own = core.get_component("data_loader")
    core.register_component("data_loader", _LOADERS.setdefault(tuple(own.search_paths), own))


class S3Backend(Backend):
    content_tags = True  # ETag: a new object, a new tag (manifests are single PUTs: their MD5)

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.bucket = store.bucket
        self.location = f"s3://{store.bucket}"
        self.sse_args: dict[str, str] = {"ServerSideEncryption": store.server_side_encryption}
        if store.server_side_encryption == "aws:kms" and store.kms_key_id:
            self.sse_args["SSEKMSKeyId"] = store.kms_key_id

    @cached_property
    def client(self) -> Any:
        from botocore.config import Config

        base = Config(
            retries={"mode": "standard", "max_attempts": 6},
            max_pool_connections=max(10, self.store.max_concurrency * 2),
        )
        session = self.store.credentials.get_boto3_session()
        _share_service_models(session)
        kwargs = self.store.credentials.aws_client_parameters.get_params_override()
        # the block's own botocore config (a dict there, a Config here) overrides our defaults
        user = kwargs.get("config")
        kwargs["config"] = base.merge(user) if isinstance(user, Config) else base
        return session.client("s3", **kwargs)

    def open_writer(self, key: str, lock_until: datetime | None = None) -> S3Upload:
        return S3Upload(self, key, lock_until)

    # --- Object Lock (s3_lock.py); a lock is set only when the store block asks for one --------

    def lock_args(self, until: datetime | None) -> dict[str, Any]:
        mode = self.store.object_lock_mode
        if not (mode and until):
            return {}
        return {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": s3_lock.ceil_second(until)}

    def check_lock(self, key: str, version_id: str | None, until: datetime | None) -> str | None:
        """Read the lock of a version just written back (and set it if the server dropped it)."""
        if not (self.store.object_lock_mode and until):
            return version_id
        return self.ensure_lock(key, version_id, until)

    def ensure_lock(self, key: str, version_id: str | None, until: datetime) -> str | None:
        mode = self.store.object_lock_mode or "GOVERNANCE"
        return s3_lock.ensure_retention(self.client, self.bucket, key, version_id, mode, until)

    def bucket_lock(self) -> s3_lock.BucketLock:
        return s3_lock.bucket_lock(self.client, self.bucket)

    def retention_of(
        self, key: str, version_id: str | None = None
    ) -> tuple[str | None, datetime | None, bool]:
        """(lock mode, retain-until, legal hold on) of a version (default: the current one)."""
        mode, until, _, held = s3_lock.retention_of(self.client, self.bucket, key, version_id)
        return mode, until, held

    def current_version(self, key: str) -> str | None:
        return s3_lock.retention_of(self.client, self.bucket, key)[2]

    def key_versions(self, prefix: str) -> dict[str, list[str]]:
        return s3_lock.key_versions(self.client, self.bucket, prefix)

    def read(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        """Stream an object. botocore retries failed requests but not a body cut mid-way: resume
        those with a Range request from the last byte received, pinned to the same object
        (VersionId when there is one, else If-Match on the ETag), a bounded number of times."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            args["VersionId"] = version_id
        offset, resumes = 0, 0
        while True:
            with s3_errors(self.bucket, key):
                body = self.client.get_object(**args)
            if offset == 0:  # pin every later range request to what the first one read
                if body.get("VersionId") and body["VersionId"] != "null":
                    args["VersionId"] = body["VersionId"]
                elif body.get("ETag"):
                    args["IfMatch"] = body["ETag"]
            try:
                for chunk in body["Body"].iter_chunks(READ_CHUNK):
                    offset += len(chunk)
                    yield chunk
                return
            except _BODY_ERRORS as exc:
                resumes += 1
                if resumes > MAX_RESUMES:
                    raise TransientError(
                        f"S3 download of s3://{self.bucket}/{key} broke {resumes} times "
                        f"(last at byte {offset}); retry later"
                    ) from None
                log.warning("S3 download of %s broke at byte %d (%s): resuming", key, offset, exc)
                time.sleep(min(RESUME_DELAY * 2 ** (resumes - 1), 2.0))
                args["Range"] = f"bytes={offset}-"

    def put_bytes(self, key: str, data: bytes, lock_until: datetime | None = None) -> str | None:
        with s3_errors(self.bucket, key):
            resp = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, **self.sse_args, **self.lock_args(lock_until)
            )
        return self.check_lock(key, resp.get("VersionId"), lock_until)

    def head(self, key: str) -> dict[str, Any]:
        with s3_errors(self.bucket, key):
            return self.client.head_object(Bucket=self.bucket, Key=key)

    def _listing(self, prefix: str) -> Iterator[dict[str, Any]]:
        with s3_errors(self.bucket, prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix.rstrip("/") + "/"
            )
            for page in pages:
                yield from page.get("Contents", [])

    def list_keys(self, prefix: str) -> Iterator[str]:
        for item in self._listing(prefix):
            yield item["Key"]

    def list_tagged(self, prefix: str) -> dict[str, str]:
        return {item["Key"]: item["ETag"] for item in self._listing(prefix)}

    def delete_keys(self, keys: list[str]) -> None:
        """Batched deletes, 1,000 keys a call. On a versioned bucket this adds delete markers."""
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            with s3_errors(self.bucket):
                resp = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise ConfigurationError(
                    f"S3 refused to delete {len(resp['Errors'])} objects, e.g. {first.get('Key')}: "
                    f"{first.get('Code')}"
                )

    def incomplete_writes(self, prefix: str) -> list[str]:
        with s3_errors(self.bucket, prefix):
            resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [u["Key"] for u in resp.get("Uploads", [])]

    def abort_incomplete_writes(self, prefix: str, stale: Callable[[str, datetime], bool]) -> list[str]:
        """Abort multipart uploads a failed backup could not abort itself (the server was down,
        the process was killed): those `stale(key, initiated)` says are old, never a live one."""
        aborted = []
        with s3_errors(self.bucket, prefix):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if stale(upload["Key"], upload["Initiated"]):
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted.append(upload["Key"])
        return aborted

    def preflight(self) -> None:
        """Before any engine starts: the bucket exists, our credentials work, and it has default
        encryption if the store block requires it. One or two requests."""
        # a GET (not HEAD): its error body names the reason (InvalidAccessKeyId, ...)
        with s3_errors(self.bucket):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.store.prefix + "/", MaxKeys=1)
        if not self.store.require_bucket_encryption:
            return
        try:
            rules = self.client.get_bucket_encryption(Bucket=self.bucket)[
                "ServerSideEncryptionConfiguration"
            ]["Rules"]
        except Exception as exc:
            if error_code(exc) != "ServerSideEncryptionConfigurationNotFoundError":
                raise s3_error(exc, self.bucket) from None
            rules = []
        if not rules:
            raise ConfigurationError(
                f"bucket {self.bucket} has no default encryption and the store block requires it: "
                f"enable it (aws s3api put-bucket-encryption --bucket {self.bucket} ...) or set "
                "require_bucket_encryption to false"
            )
