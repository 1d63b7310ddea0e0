"""Streaming encode/decode: compress, then optionally encrypt, in bounded memory.

Encryption is chunked AES-256-GCM (the STREAM construction): each record carries its index
and a final flag in the nonce, so re-ordered, truncated or extended ciphertext fails
authentication. The key is derived with scrypt from a secret and a per-object salt. Every
object names the key it was written with (a key id, itself derived with scrypt, so it says
nothing about the secret), so a store can hold its current key and older ones for reading:
rotating a key needs no re-encryption. The byte format is in docs/encryption-format.md.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tasks.errors import BadInput, IntegrityError, KeyNotHeld, ambiguous_key_error
from tasks.models import Compression, Encryption

MAGIC = b"KLBENC2\n"  # written: carries a key id
MAGIC_V1 = b"KLBENC1\n"  # read only: objects written before key ids (every key is tried)
KEY_ID_LEN = 8
KEY_ID_SALT = b"klb-key-id/v1\x00\x00\x00"  # 16 bytes, fixed: the id of a key never changes
SALT_LEN = 16
PREFIX_LEN = 7
CHUNK = 256 * 1024
TAG = 16
RECORD = CHUNK + TAG
HEADER_LEN = len(MAGIC) + KEY_ID_LEN + SALT_LEN + PREFIX_LEN
HEADER_LEN_V1 = len(MAGIC_V1) + SALT_LEN + PREFIX_LEN
ZSTD_LEVEL = 1  # when the store block sets none: measured in bench/pg_parts.py (docs/performance.md)
ZSTD_THREADS = -1  # one compression worker per core, off the GIL, beside the engine's dump


def derive_key(secret: str, salt: bytes) -> bytes:
    if not secret:
        raise BadInput("the encryption key is empty: set a non-empty secret")
    return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(secret.encode())


@lru_cache(maxsize=64)
def key_id(secret: str) -> str:
    """The public name of a key (16 hex digits): scrypt with a fixed salt, as slow to guess from
    as the object keys themselves. Shown by `klb` and written into every encrypted object."""
    return derive_key(secret, KEY_ID_SALT)[:KEY_ID_LEN].hex()


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    if index >= 2**32:
        raise IntegrityError("encrypted stream too long (over 2^32 records)")
    return prefix + struct.pack(">I?", index, final)


class _Compressor:
    def __init__(self, kind: Compression, level: int | None) -> None:
        self.kind = kind
        if kind is Compression.zstd:
            self._obj = zstandard.ZstdCompressor(
                level=level or ZSTD_LEVEL, threads=ZSTD_THREADS
            ).compressobj()
        elif kind is Compression.gzip:
            self._obj = zlib.compressobj(level or 6, zlib.DEFLATED, 31)
        else:
            self._obj = None

    def update(self, data: bytes) -> bytes:
        return self._obj.compress(data) if self._obj else data

    def finish(self) -> bytes:
        return self._obj.flush() if self._obj else b""


class _Decompressor:
    def __init__(self, kind: Compression) -> None:
        self.kind = kind
        if kind is Compression.zstd:
            self._obj = zstandard.ZstdDecompressor().decompressobj()
        elif kind is Compression.gzip:
            self._obj = zlib.decompressobj(31)
        else:
            self._obj = None

    def update(self, data: bytes) -> bytes:
        if not self._obj or not data:
            return data
        if self._obj.eof:
            raise IntegrityError(f"{self.kind} data has trailing bytes after its end")
        try:
            return self._obj.decompress(data)
        except (zstandard.ZstdError, zlib.error) as exc:
            raise IntegrityError(f"{self.kind} data is corrupt: {exc}") from None

    def finish(self) -> bytes:
        if self.kind is Compression.gzip:
            tail = self._obj.flush()
            if not self._obj.eof:
                raise IntegrityError("gzip stream is truncated")
            return tail
        if self.kind is Compression.zstd and not self._obj.eof:
            raise IntegrityError("zstd stream is truncated")
        return b""


class _Encryptor:
    def __init__(self, secret: str) -> None:
        salt, self._prefix = os.urandom(SALT_LEN), os.urandom(PREFIX_LEN)
        self._aead = AESGCM(derive_key(secret, salt))
        self.key_id = key_id(secret)
        self._header = MAGIC + bytes.fromhex(self.key_id) + salt + self._prefix
        self._buf = bytearray()
        self._index = 0
        self._started = False

    def _seal(self, data: bytes, final: bool) -> bytes:
        out = self._aead.encrypt(_nonce(self._prefix, self._index, final), data, self._header)
        self._index += 1
        return out

    def update(self, data: bytes) -> bytes:
        out = bytearray()
        if not self._started:
            out += self._header
            self._started = True
        self._buf += data
        while len(self._buf) > CHUNK:
            out += self._seal(bytes(self._buf[:CHUNK]), False)
            del self._buf[:CHUNK]
        return bytes(out)

    def finish(self) -> bytes:
        head = self.update(b"")
        return head + self._seal(bytes(self._buf), True)


class _Decryptor:
    """Reads both formats. KLBENC2 names its key: only that key is used, and a key the store does
    not hold is a configuration error naming the id. KLBENC1 (no id) tries each key on the first
    record; authentication picks the right one."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = list(secrets)
        self._candidates: list[AESGCM] | None = None
        self._aead: AESGCM | None = None
        self._buf = bytearray()
        self._index = 0
        self.key_id: str | None = None

    def _open(self, record: bytes, final: bool) -> bytes:
        nonce = _nonce(self._prefix, self._index, final)
        for aead in [self._aead] if self._aead else self._candidates or []:
            try:
                out = aead.decrypt(nonce, record, self._header)
            except InvalidTag:
                continue
            self._aead = aead
            self._index += 1
            return out
        # with a key id the key is known right, so a failure is the data; without one (KLBENC1)
        # the first record failing may be the key, a later one (the first authenticated) the data
        error = ambiguous_key_error if self.key_id is None and self._index == 0 else IntegrityError
        raise error(
            "decryption failed: the encryption key is wrong, or the object was altered, "
            "truncated or re-ordered"
        )

    def _read_header(self) -> bool:
        if self._buf.startswith(MAGIC):
            size = HEADER_LEN
        elif self._buf.startswith(MAGIC_V1):
            size = HEADER_LEN_V1
        elif len(self._buf) >= len(MAGIC):
            raise IntegrityError("object is not in the encrypted format its manifest declares")
        else:
            return False
        if len(self._buf) < size:
            return False
        if not self._secrets:
            raise BadInput(
                "this backup is encrypted: configure the store's encryption_key with the "
                "key it was written with (or add that key to previous_encryption_keys)"
            )
        self._header = bytes(self._buf[:size])
        salt = self._header[size - PREFIX_LEN - SALT_LEN : size - PREFIX_LEN]
        self._prefix = self._header[size - PREFIX_LEN :]
        secrets = self._secrets
        if size == HEADER_LEN:
            self.key_id = self._header[len(MAGIC) : len(MAGIC) + KEY_ID_LEN].hex()
            secrets = [k for k in self._secrets if key_id(k) == self.key_id]
            if not secrets:
                held = ", ".join(key_id(k) for k in self._secrets)
                raise KeyNotHeld(
                    f"decryption failed: the encryption key is wrong: this object was encrypted with key "
                    f"{self.key_id} and the store holds {held}: set that key as encryption_key or add "
                    "it to previous_encryption_keys"
                )
        self._candidates = [AESGCM(derive_key(k, salt)) for k in secrets]
        del self._buf[:size]
        return True

    def update(self, data: bytes) -> bytes:
        self._buf += data
        if self._candidates is None and not self._read_header():
            return b""
        out = bytearray()
        while len(self._buf) > RECORD:
            out += self._open(bytes(self._buf[:RECORD]), False)
            del self._buf[:RECORD]
        return bytes(out)

    def finish(self) -> bytes:
        if self._candidates is None:
            raise IntegrityError("encrypted object is truncated (no header)")
        return self._open(bytes(self._buf), True)


class Encoder:
    """raw bytes -> (compress) -> (encrypt) -> stored bytes, hashing both ends."""

    def __init__(self, compression: Compression, secret: str | None, level: int | None = None):
        self.compression = compression
        self.encryption = Encryption.aes256gcm if secret else Encryption.none
        self._comp = _Compressor(compression, level)
        self._enc = _Encryptor(secret) if secret else None
        self.key_id = self._enc.key_id if self._enc else None
        self.raw_hash, self.raw_size = hashlib.sha256(), 0
        self.hash, self.size = hashlib.sha256(), 0

    def _out(self, data: bytes) -> bytes:
        if self._enc:
            data = self._enc.update(data)
        self.hash.update(data)
        self.size += len(data)
        return data

    def update(self, data: bytes) -> bytes:
        self.raw_hash.update(data)
        self.raw_size += len(data)
        return self._out(self._comp.update(data))

    def finish(self) -> bytes:
        tail = self._comp.finish()
        if self._enc:
            tail = self._enc.update(tail) + self._enc.finish()
        self.hash.update(tail)
        self.size += len(tail)
        return tail


class Decoder:
    """stored bytes -> (decrypt) -> (decompress) -> raw bytes, hashing both ends."""

    def __init__(self, compression: Compression, encryption: Encryption, secret: str | Sequence[str] | None):
        """`secret`: the key, or the store's keys (current first, then older ones for reading)."""
        keys = [secret] if isinstance(secret, str) else list(secret or [])
        self._dec = _Decryptor([k for k in keys if k]) if encryption is Encryption.aes256gcm else None
        self._comp = _Decompressor(compression)
        self.hash, self.size = hashlib.sha256(), 0
        self.raw_hash, self.raw_size = hashlib.sha256(), 0

    def _raw(self, data: bytes) -> bytes:
        self.raw_hash.update(data)
        self.raw_size += len(data)
        return data

    def update(self, data: bytes) -> bytes:
        self.hash.update(data)
        self.size += len(data)
        if self._dec:
            data = self._dec.update(data)
        return self._raw(self._comp.update(data))

    def finish(self) -> bytes:
        data = self._dec.finish() if self._dec else b""
        return self._raw(self._comp.update(data) + self._comp.finish())


def iter_chunks(source: Iterable[bytes] | object, size: int = 1024 * 1024) -> Iterator[bytes]:
    """Chunks from a file-like (read) or an iterable of bytes."""
    read = getattr(source, "read", None)
    if read is not None:
        while chunk := read(size):
            yield chunk
        return
    for chunk in source:  # type: ignore[union-attr]
        if chunk:
            yield bytes(chunk)
