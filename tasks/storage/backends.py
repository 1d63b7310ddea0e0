"""Byte-level I/O of the two stores. No codec, no manifests: tasks/storage/session.py builds on this."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
from urllib3.exceptions import HTTPError as Urllib3Error

from blocks.store import LocalStore, S3Store, StoreBlock
from tasks.errors import ConfigurationError, IntegrityError, NotFound, TransientError

READ_CHUNK = 1024 * 1024
MAX_RESUMES = 5  # a download cut mid-body resumes this many times before it fails
RESUME_DELAY = 0.1  # seconds before the first resume; doubles each time, at most 2 s
log = logging.getLogger(__name__)
# a response body cut mid-way (connection dropped, reset, timed out while streaming)
_BODY_ERRORS = (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, Urllib3Error, ConnectionError)


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> str | None: ...
    def abort(self) -> None: ...


class Backend(Protocol):
    location: str

    def open_writer(self, key: str) -> Writer: ...
    def read(self, key: str, version_id: str | None = None) -> Iterator[bytes]: ...
    def put_bytes(self, key: str, data: bytes) -> str | None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def list_keys(self, prefix: str) -> Iterator[str]: ...
    def delete_keys(self, keys: list[str]) -> None: ...
    def incomplete_writes(self, prefix: str) -> list[str]: ...
    def abort_incomplete_writes(self, prefix: str, stale: Callable[[str, datetime], bool]) -> list[str]: ...
    def preflight(self) -> None: ...


def backend_for(store: StoreBlock) -> Backend:
    if isinstance(store, LocalStore):
        return LocalBackend(Path(store.path))
    if isinstance(store, S3Store):
        return S3Backend(store)
    raise ConfigurationError(f"unsupported store block {type(store).__name__}")


# --- local directory -------------------------------------------------------------------------


def _disk_error(exc: OSError, path: Path) -> ConfigurationError:
    if exc.errno == errno.ENOSPC:
        return ConfigurationError(
            f"local store is full ({path}): free space or point KLB_STORE_DIR / the store block "
            "elsewhere; the partial backup was removed"
        )
    return ConfigurationError(f"local store error at {path}: {exc.strerror}")


class _LocalWriter:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.partial = final.with_name(f"{final.name}.partial-{secrets.token_hex(4)}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.partial, "wb")  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            raise _disk_error(exc, final) from None

    def write(self, data: bytes) -> None:
        try:
            self._fh.write(data)
        except OSError as exc:
            raise _disk_error(exc, self.final) from None

    def commit(self) -> None:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self.partial, self.final)
            _fsync_dir(self.final.parent)
        except OSError as exc:
            self.abort()
            raise _disk_error(exc, self.final) from None

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ConfigurationError(f"key {key!r} escapes the store directory")
        return path

    def preflight(self) -> None:
        pass

    def open_writer(self, key: str) -> _LocalWriter:
        return _LocalWriter(self._path(key))

    def read(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        try:
            fh = open(self._path(key), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFound(f"object {key} is missing from the local store {self.root}") from None
        with fh:
            while chunk := fh.read(READ_CHUNK):
                yield chunk

    def put_bytes(self, key: str, data: bytes) -> None:
        writer = self.open_writer(key)
        writer.write(data)
        writer.commit()

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.read(key))

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if ".partial-" not in name:
                    yield str((Path(dirpath) / name).relative_to(self.root))

    def delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):  # prune empty backup/date directories
                path.parent.rmdir()
                path.parent.parent.rmdir()

    def incomplete_writes(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return [str(p.relative_to(self.root)) for p in base.rglob("*.partial-*")]

    def abort_incomplete_writes(self, prefix: str, stale: Callable[[str, datetime], bool]) -> list[str]:
        """Remove partial files a killed process left, those `stale(key, modified)` says are old."""
        removed = []
        for key in self.incomplete_writes(prefix):
            path = self.root / key
            with contextlib.suppress(FileNotFoundError):
                if stale(key, datetime.fromtimestamp(path.stat().st_mtime, UTC)):
                    path.unlink()
                    removed.append(key)
        return removed


# --- S3 ----------------------------------------------------------------------------------------


def s3_error(exc: Exception, bucket: str, key: str = "") -> Exception:
    """Map botocore errors to messages that say what to do."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if isinstance(exc, NoCredentialsError):
        return ConfigurationError("no AWS credentials: set them in the S3 store block's credentials")
    if isinstance(exc, EndpointConnectionError):
        return ConfigurationError(f"cannot reach the S3 endpoint for {where}: check endpoint_url / network")
    if isinstance(exc, ReadTimeoutError):
        return TransientError(f"S3 read timed out on {where}")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("PreconditionFailed", "412"):
            return IntegrityError(f"{where} changed while it was being read: read it again")
        if code == "NoSuchBucket":
            return ConfigurationError(f"bucket {bucket} does not exist: create it or fix the store block")
        if code in ("NoSuchKey", "404", "NoSuchVersion"):
            return NotFound(f"object {where} does not exist")
        if code in (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "AccessDenied",
            "InvalidToken",
            "TokenRefreshRequired",
            "403",
        ):
            return ConfigurationError(
                f"S3 refused our credentials for {where} ({code}): renew or fix the AWS credentials block"
            )
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable"):
            return TransientError(f"S3 is failing on {where} ({code or status}); retry later")
        return ConfigurationError(f"S3 error on {where}: {code}")
    return exc


class _S3Writer:
    def __init__(self, backend: S3Backend, key: str) -> None:
        self.b, self.key = backend, key
        self.part_size = backend.store.part_size_mib * 1024 * 1024
        self._buf = bytearray()
        self._parts: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=backend.store.max_concurrency)
        self.upload_id: str | None = None

    def _start(self) -> None:
        try:
            resp = self.b.client.create_multipart_upload(
                Bucket=self.b.bucket, Key=self.key, **self.b.sse_args
            )
        except Exception as exc:
            raise s3_error(exc, self.b.bucket, self.key) from None
        self.upload_id = resp["UploadId"]

    def _upload(self, number: int, data: bytes) -> dict[str, Any]:
        try:
            resp = self.b.client.upload_part(
                Bucket=self.b.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
            )
        except Exception as exc:
            raise s3_error(exc, self.b.bucket, self.key) from None
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def _submit(self, data: bytes) -> None:
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
        self._buf += data
        while len(self._buf) >= self.part_size:
            self._submit(bytes(self._buf[: self.part_size]))
            del self._buf[: self.part_size]

    def commit(self) -> str | None:
        try:
            if self.upload_id is None:  # small object: one PUT
                return self.b.put_bytes(self.key, bytes(self._buf))
            if self._buf:
                self._submit(bytes(self._buf))
                self._buf.clear()
            parts = [f.result() for f in self._parts]
            resp = self.b.client.complete_multipart_upload(
                Bucket=self.b.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
            )
            return resp.get("VersionId")
        except Exception as exc:
            self.abort()
            raise s3_error(exc, self.b.bucket, self.key) from None
        finally:
            self._pool.shutdown(wait=True)

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


class S3Backend:
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
        kwargs = self.store.credentials.aws_client_parameters.get_params_override()
        # the block's own botocore config (a dict there, a Config here) overrides our defaults
        user = kwargs.get("config")
        kwargs["config"] = base.merge(user) if isinstance(user, Config) else base
        return session.client("s3", **kwargs)

    def open_writer(self, key: str) -> _S3Writer:
        return _S3Writer(self, key)

    def read(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        """Stream an object. botocore retries failed requests but not a body cut mid-way: resume
        those with a Range request from the last byte received, pinned to the same object
        (VersionId when there is one, else If-Match on the ETag), a bounded number of times."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            args["VersionId"] = version_id
        offset, resumes = 0, 0
        while True:
            try:
                body = self.client.get_object(**args)
            except Exception as exc:
                raise s3_error(exc, self.bucket, key) from None
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

    def put_bytes(self, key: str, data: bytes) -> str | None:
        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **self.sse_args)
        except Exception as exc:
            raise s3_error(exc, self.bucket, key) from None
        return resp.get("VersionId")

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.read(key))

    def head(self, key: str) -> dict[str, Any]:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise s3_error(exc, self.bucket, key) from None

    def list_keys(self, prefix: str) -> Iterator[str]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix.rstrip("/") + "/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"]
        except Exception as exc:
            raise s3_error(exc, self.bucket, prefix) from None

    def delete_keys(self, keys: list[str]) -> None:
        """Batched deletes, 1,000 keys a call. On a versioned bucket this adds delete markers."""
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            try:
                resp = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as exc:
                raise s3_error(exc, self.bucket) from None
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise ConfigurationError(
                    f"S3 refused to delete {len(resp['Errors'])} objects, e.g. {first.get('Key')}: "
                    f"{first.get('Code')}"
                )

    def incomplete_writes(self, prefix: str) -> list[str]:
        try:
            resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        except Exception as exc:
            raise s3_error(exc, self.bucket, prefix) from None
        return [u["Key"] for u in resp.get("Uploads", [])]

    def abort_incomplete_writes(self, prefix: str, stale: Callable[[str, datetime], bool]) -> list[str]:
        """Abort multipart uploads a failed backup could not abort itself (the server was down,
        the process was killed): those `stale(key, initiated)` says are old, never a live one."""
        aborted = []
        try:
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
        except Exception as exc:
            raise s3_error(exc, self.bucket, prefix) from None
        return aborted

    def preflight(self) -> None:
        """Before any engine starts: the bucket exists, our credentials work, and it has default
        encryption if the store block requires it. One or two requests."""
        try:  # a GET (not HEAD): its error body names the reason (InvalidAccessKeyId, ...)
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.store.prefix + "/", MaxKeys=1)
        except Exception as exc:
            raise s3_error(exc, self.bucket) from None
        if not self.store.require_bucket_encryption:
            return
        try:
            rules = self.client.get_bucket_encryption(Bucket=self.bucket)[
                "ServerSideEncryptionConfiguration"
            ]["Rules"]
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code != "ServerSideEncryptionConfigurationNotFoundError":
                raise s3_error(exc, self.bucket) from None
            rules = []
        if not rules:
            raise ConfigurationError(
                f"bucket {self.bucket} has no default encryption and the store block requires it: "
                f"enable it (aws s3api put-bucket-encryption --bucket {self.bucket} ...) or set "
                "require_bucket_encryption to false"
            )
