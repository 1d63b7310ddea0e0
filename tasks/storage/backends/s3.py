"""An S3 (or S3-compatible) bucket as a store: multipart streaming uploads with SSE, resumable
downloads pinned to one object version. Every botocore error goes through s3_errors."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime
from functools import cached_property
from typing import Any

from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
from urllib3.exceptions import HTTPError as Urllib3Error

from blocks.store import S3Store
from tasks.errors import ConfigurationError, IntegrityError, TransientError
from tasks.storage.backends import s3_lock
from tasks.storage.backends.base import READ_CHUNK, Backend
from tasks.storage.backends.s3_errors import error_code, s3_error, s3_errors

# S3 takes at most 10,000 parts per upload, and a stream's size is unknown when it starts: the
# part size grows by the block's part_size_mib every PARTS_PER_STEP parts (16 MiB parts grow to
# 320 MiB, and 10,000 of them hold 1.6 TiB), so a large database does not fail after hours
# at part 10,001, and a small one keeps small parts (memory: max_concurrency parts in flight).
MAX_PARTS = 10_000
PARTS_PER_STEP = 500
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


class _S3Writer:
    def __init__(self, backend: S3Backend, key: str, lock_until: datetime | None = None) -> None:
        self.b, self.key, self.lock_until = backend, key, lock_until
        self.part_size = backend.store.part_size_mib * 1024 * 1024
        self._pending: list[bytes] = []  # joined once per part: one copy of the bytes, not three
        self._pending_size = 0
        self._parts: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=backend.store.max_concurrency)
        self.upload_id: str | None = None
        self.size = 0
        # True once the store itself has confirmed every byte (see _confirm): the session then
        # needs no read-back of this object
        self.checked_by_store = False
        self._stored = False

    def _start(self) -> None:
        with s3_errors(self.b.bucket, self.key):
            resp = self.b.client.create_multipart_upload(
                Bucket=self.b.bucket,
                Key=self.key,
                ChecksumAlgorithm="SHA256",
                **self.b.sse_args,
                **self.b.lock_args(self.lock_until),
            )
        self.upload_id = resp["UploadId"]

    def _upload(self, number: int, data: bytes) -> dict[str, Any]:
        # S3 recomputes this SHA-256 from the bytes it receives and refuses the part (BadDigest)
        # if they differ: the integrity check happens on upload, not by reading the object back
        digest = _b64sha256(data)
        with s3_errors(self.b.bucket, self.key):
            resp = self.b.client.upload_part(
                Bucket=self.b.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=digest,
            )
        return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": digest}

    def _next_part_size(self) -> int:
        return self.part_size * (1 + len(self._parts) // PARTS_PER_STEP)

    def _submit(self, data: bytes) -> None:
        if len(self._parts) >= MAX_PARTS:
            raise ConfigurationError(
                f"s3://{self.b.bucket}/{self.key}: more than {MAX_PARTS} parts of up to "
                f"{self._next_part_size() >> 20} MiB: raise the store block's part_size_mib"
            )
        if self.upload_id is None:
            self._start()
        inflight = [f for f in self._parts if not f.done()]
        if len(inflight) >= self.b.store.max_concurrency:  # bounded memory: wait for a slot
            wait(inflight, return_when=FIRST_COMPLETED)
        for f in self._parts:
            if f.done() and f.exception():
                raise f.exception()  # type: ignore[misc]
        self._parts.append(self._pool.submit(self._upload, len(self._parts) + 1, data))

    def write(self, data: bytes) -> None:
        """Parts are at least the current part size (S3 wants 5 MiB for all but the last) and
        less than twice it: the usual small writes are joined once, a large one is cut."""
        self.size += len(data)
        self._pending.append(bytes(data))
        self._pending_size += len(data)
        while self._pending_size >= (size := self._next_part_size()):
            joined = self._take()
            if len(joined) < 2 * size:
                self._submit(joined)
            else:
                self._submit(joined[:size])
                self._pending, self._pending_size = [joined[size:]], len(joined) - size

    def _take(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        return data

    def commit(self) -> str | None:
        with s3_errors(self.b.bucket, self.key):
            try:
                if self.upload_id is None:  # small object: one PUT
                    data = self._take()
                    resp = self.b.client.put_object(
                        Bucket=self.b.bucket,
                        Key=self.key,
                        Body=data,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=_b64sha256(data),
                        **self.b.sse_args,
                        **self.b.lock_args(self.lock_until),
                    )
                    self._stored = True
                    self._confirm(resp.get("VersionId"), _b64sha256(data), None)
                    return self.b.check_lock(self.key, resp.get("VersionId"), self.lock_until)
                if self._pending:
                    self._submit(self._take())
                parts = [f.result() for f in self._parts]
                resp = self.b.client.complete_multipart_upload(
                    Bucket=self.b.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": parts},
                )
                # S3's checksum of a multipart object: the SHA-256 of the parts' SHA-256s
                composite = hashlib.sha256(b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in parts))
                expected = base64.b64encode(composite.digest()).decode()
                self._stored = True
                self._confirm(resp.get("VersionId"), expected, len(parts))
                return self.b.check_lock(self.key, resp.get("VersionId"), self.lock_until)
            except Exception:
                self.abort()
                if self._stored:  # written, but not confirmed: it must not stay under the key
                    with contextlib.suppress(Exception):
                        self.b.delete_keys([self.key])
                raise
            finally:
                self._pool.shutdown(wait=True)

    def _confirm(self, version_id: str | None, expected: str, parts: int | None) -> None:
        """Ask the store which checksum it recorded for the object now under the key, and its size.
        A store that checks uploads (S3) answers with the SHA-256 it verified; one that does not
        keep checksums (some S3-compatible servers) answers nothing, and the session reads the
        object back instead."""
        args: dict[str, Any] = {"Bucket": self.b.bucket, "Key": self.key, "ChecksumMode": "ENABLED"}
        if version_id and version_id != "null":  # "null": an unversioned bucket's answer
            args["VersionId"] = version_id
        head = self.b.client.head_object(**args)
        stored = head.get("ChecksumSHA256")
        if not stored:
            log.info("%s: the store keeps no SHA-256 checksum: the object will be read back", self.key)
            return
        value, _, count = stored.partition("-")  # composite checksums end in -<parts>
        if value != expected or (count and parts is not None and count != str(parts)):
            raise IntegrityError(
                f"s3://{self.b.bucket}/{self.key}: the store recorded checksum {stored}, not the "
                f"{expected} of the bytes sent: the upload is damaged; retry the backup"
            )
        if head.get("ContentLength") != self.size:
            raise IntegrityError(
                f"s3://{self.b.bucket}/{self.key}: the store holds {head.get('ContentLength')} "
                f"bytes, {self.size} were sent: retry the backup"
            )
        self.checked_by_store = True

    def abort(self) -> None:
        for f in self._parts:
            f.cancel()
        self._pool.shutdown(wait=True)
        if self.upload_id is not None:
            with contextlib.suppress(Exception):
                self.b.client.abort_multipart_upload(
                    Bucket=self.b.bucket, Key=self.key, UploadId=self.upload_id
                )
            self.upload_id = None


def _b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


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

    def open_writer(self, key: str, lock_until: datetime | None = None) -> _S3Writer:
        return _S3Writer(self, key, lock_until)

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
