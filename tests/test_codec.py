"""The codec alone: every compression x encryption round-trips; tampering is caught."""

import os

import pytest

from tasks.errors import BadInput, IntegrityError
from tasks.models import Compression, Encryption
from tasks.storage.codec import CHUNK, HEADER_LEN, Decoder, Encoder


def encode(data: bytes, compression: Compression, secret: str | None, step: int = 70_000) -> bytes:
    enc = Encoder(compression, secret)
    out = b"".join(enc.update(data[i : i + step]) for i in range(0, len(data), step))
    return out + enc.finish()


def decode(blob: bytes, compression: Compression, secret: str | None, encrypted: bool | None = None) -> bytes:
    step = 50_000
    encrypted = bool(secret) if encrypted is None else encrypted
    dec = Decoder(compression, Encryption.aes256gcm if encrypted else Encryption.none, secret)
    out = b"".join(dec.update(blob[i : i + step]) for i in range(0, len(blob), step))
    return out + dec.finish()


@pytest.mark.parametrize("compression", list(Compression))
@pytest.mark.parametrize("secret", [None, "s3cret-key"])
@pytest.mark.parametrize("size", [0, 1, CHUNK, 2 * CHUNK + 17])
def test_round_trip(compression, secret, size):
    data = os.urandom(size // 2) + b"x" * (size - size // 2)
    assert decode(encode(data, compression, secret), compression, secret) == data


def test_wrong_key_fails_authentication():
    blob = encode(os.urandom(1000), Compression.zstd, "right")
    with pytest.raises(IntegrityError, match="key is wrong"):
        decode(blob, Compression.zstd, "wrong")


def test_missing_key_says_what_to_configure():
    blob = encode(b"data", Compression.zstd, "right")
    with pytest.raises(BadInput, match="encryption_key"):
        decode(blob, Compression.zstd, None, encrypted=True)


def test_truncation_at_a_record_boundary_is_caught():
    data = os.urandom(3 * CHUNK)
    blob = encode(data, Compression.none, "k")
    record = CHUNK + 16
    header = len(blob) - 3 * record - 16  # three full records plus an empty final one
    with pytest.raises(IntegrityError):
        decode(blob[: header + 2 * record], Compression.none, "k")


def test_reordered_records_are_caught():
    blob = encode(os.urandom(3 * CHUNK + 5), Compression.none, "k")
    record = CHUNK + 16
    header = HEADER_LEN
    r1, r2 = blob[header : header + record], blob[header + record : header + 2 * record]
    swapped = blob[:header] + r2 + r1 + blob[header + 2 * record :]
    with pytest.raises(IntegrityError):
        decode(swapped, Compression.none, "k")


@pytest.mark.parametrize("compression", [Compression.zstd, Compression.gzip])
def test_truncated_compression_is_caught(compression):
    blob = encode(os.urandom(200_000), compression, None)
    with pytest.raises(IntegrityError, match="truncated|corrupt"):
        decode(blob[:-10], compression, None)
