"""Who checks an upload: S3 verifies a SHA-256 per part (and per single PUT) as it receives the
bytes, so a backup to S3 reads nothing back; a store that keeps no checksum is read back."""

from __future__ import annotations

import os

import pytest

from tasks.storage.session import read_object
from tests.faults.s3_fault_proxy import Rule
from tests.faults.test_s3_faults import MIB, backup_bytes, sha


def _object_gets(proxy, manifest) -> list[str]:
    keys = [o.key for o in manifest.objects]
    return [path for _, path, _ in proxy.requests("GET") if any(path.split("?")[0].endswith(k) for k in keys)]


@pytest.mark.fault(
    "s3",
    "none: a multipart object and a single-PUT object written to S3 with SHA-256 checksums",
    "the store confirms every object's SHA-256 (composite for parts) and size; nothing is read back; "
    "the backup counts as verified",
)
def test_s3_checks_the_upload_so_the_backup_reads_nothing_back(proxied_store, fault_proxy):
    store = proxied_store(part_size_mib=5, compression="none")
    payload, first = os.urandom(12 * MIB), os.urandom(1000)
    manifest = backup_bytes(store, payload, first=first)
    assert _object_gets(fault_proxy, manifest) == []
    assert len(fault_proxy.requests("HEAD")) == 2  # one confirmation per object
    assert manifest.verified_at is not None
    assert b"".join(read_object(store, manifest.object("data"))) == payload
    assert sha(b"".join(read_object(store, manifest.object("first")))) == sha(first)


@pytest.mark.fault(
    "s3",
    "an S3-compatible server that keeps no checksums (HEAD answers without x-amz-checksum-*)",
    "each object is read back and checked before the manifest is written, as before",
)
def test_a_store_that_keeps_no_checksum_is_read_back(proxied_store, fault_proxy):
    fault_proxy.add(Rule("strip_checksums", method="HEAD", times=None))
    store = proxied_store(part_size_mib=5, compression="none")
    manifest = backup_bytes(store, os.urandom(6 * MIB), first=b"small")
    assert len(_object_gets(fault_proxy, manifest)) == 2
    assert manifest.verified_at is not None


@pytest.mark.fault(
    "s3",
    "the store cannot answer the confirming HEAD (500 every time)",
    "the backup fails and leaves no object and no manifest behind",
)
def test_an_unconfirmed_upload_fails_the_backup_cleanly(proxied_store, fault_proxy, s3_bucket):
    from tests.faults.helpers import multipart_uploads, s3_keys

    bucket, client = s3_bucket
    fault_proxy.add(Rule("error", method="HEAD", times=None))
    store = proxied_store(part_size_mib=5, compression="none")
    with pytest.raises(Exception):  # noqa: B017 - whichever error the S3 wrapper maps a 500 to
        backup_bytes(store, os.urandom(6 * MIB))
    assert s3_keys(client, bucket) == [] and multipart_uploads(client, bucket) == []
