"""Streaming an object into S3: a multipart upload whose parts S3 checks on arrival (SHA-256 per
part), confirmed after completion by the composite checksum and size S3 recorded. Memory stays
bounded: at most max_concurrency parts in flight plus the one being filled."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tasks.errors import ConfigurationError, IntegrityError
from tasks.storage.backends.heap import return_large_buffers
from tasks.storage.backends.s3_errors import s3_errors

if TYPE_CHECKING:
    from tasks.storage.backends.s3 import S3Backend

# S3 takes at most 10,000 parts per upload, and a stream's size is unknown when it starts: the
# part size grows by the block's part_size_mib every PARTS_PER_STEP parts (16 MiB parts grow to
# 320 MiB, and 10,000 of them hold 1.6 TiB), so a large database does not fail after hours
# at part 10,001, and a small one keeps small parts (memory: max_concurrency parts in flight).
MAX_PARTS = 10_000
PARTS_PER_STEP = 500
log = logging.getLogger(__name__)


class S3Upload:
    """One object streamed into S3 as a multipart upload (one PUT when small), every part
    checked by S3 on arrival, at most max_concurrency parts in flight."""

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
        return_large_buffers()

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

    def _upload(self, number: int, box: list[bytes]) -> dict[str, Any]:
        # the part comes in a box emptied here: the pool's work item holds its arguments until
        # after the future is done, which would keep a finished part alive beside the next one
        data = box.pop()
        # S3 recomputes this SHA-256 from the bytes it receives and refuses the part (BadDigest)
        # if they differ: the integrity check happens on upload, not by reading the object back
        digest = b64sha256(data)
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
        self._parts.append(self._pool.submit(self._upload, len(self._parts) + 1, [data]))

    def _wait_for_slot(self) -> None:
        """Before the next part is joined: at most max_concurrency parts in flight, and the one
        being joined (with its pieces) only once a slot is free. A failed part fails the stream."""
        inflight = [f for f in self._parts if not f.done()]
        if len(inflight) >= self.b.store.max_concurrency:
            wait(inflight, return_when=FIRST_COMPLETED)
        for f in self._parts:
            if f.done() and f.exception():
                raise f.exception()  # type: ignore[misc]

    def write(self, data: bytes) -> None:
        """Parts are at least the current part size (S3 wants 5 MiB for all but the last) and
        less than twice it: the usual small writes are joined once, a large one is cut."""
        self.size += len(data)
        self._pending.append(bytes(data))
        self._pending_size += len(data)
        while self._pending_size >= (size := self._next_part_size()):
            self._wait_for_slot()
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
                        ChecksumSHA256=b64sha256(data),
                        **self.b.sse_args,
                        **self.b.lock_args(self.lock_until),
                    )
                    self._stored = True
                    self._confirm(resp.get("VersionId"), b64sha256(data), None)
                    return self.b.check_lock(self.key, resp.get("VersionId"), self.lock_until)
                if self._pending:
                    self._wait_for_slot()
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


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()
