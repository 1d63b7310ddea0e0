"""Key rotation: back up with key A, rotate to B (A kept for reading), verify and restore the old
backup, new backups use B; the documented format decrypts without the project."""

from __future__ import annotations

import os
import secrets
import shutil
import struct
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from flows.console import OK, PROBLEM, main
from tasks.errors import BadInput, KeyNotHeld
from tasks.models import Compression, Encryption
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup
from tasks.storage.codec import CHUNK, MAGIC_V1, Decoder, derive_key, key_id
from tasks.storage.session import backup_session, preflight, read_object
from tests.console_helpers import app_target, files, sample_dir

ROOT = Path(__file__).resolve().parent.parent
KEY_A, KEY_B = "key-A-" + os.urandom(6).hex(), "key-B-" + os.urandom(6).hex()


def header_key_id(store, key: str) -> str:
    head = backend_for(store).get_bytes(key)[:16]
    assert head[:8] == b"KLBENC2\n"
    return head[8:16].hex()


def klb(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_rotate_then_old_backups_verify_and_restore_and_new_ones_use_the_new_key(
    prefect_server, tmp_path, any_store, capsys
):
    from flows.backup import backup_component
    from flows.restore import restore_component

    src = sample_dir(tmp_path, size=600_000)
    dest = tmp_path / "restored"
    target = app_target(src, dest)
    store_a = any_store(encryption_key=SecretStr(KEY_A))
    old = get_backup(store_a, backup_component("app-state", target, store_a).id)
    assert header_key_id(store_a, old.objects[0].key) == key_id(KEY_A)

    # rotate: B writes, A is kept for reading; nothing is re-encrypted
    store_b = any_store(encryption_key=SecretStr(KEY_B), previous_encryption_keys=[SecretStr(KEY_A)])
    rotated = "rotated-" + secrets.token_hex(4)
    store_b.save(rotated)
    code, out = klb(capsys, "--store", rotated, "verify", old.id)
    assert code == OK and out.splitlines()[-1].endswith("verified")
    code, out = klb(capsys, "--store", rotated, "status", "app-state")
    assert f"encryption: writes with key {key_id(KEY_B)}; reads keys {key_id(KEY_B)}, {key_id(KEY_A)}" in out

    shutil.rmtree(dest)
    dest.mkdir()
    restore_component("app-state", old.id, target, store_b)
    assert files(dest) == files(src)

    new = get_backup(store_b, backup_component("app-state", target, store_b).id)
    assert header_key_id(store_b, new.objects[0].key) == key_id(KEY_B)
    with pytest.raises(KeyNotHeld, match=f"encrypted with key {key_id(KEY_B)}"):
        b"".join(read_object(store_a, new.objects[0]))  # a store that only knows A cannot read it

    # dropping A too early: the old backup no longer reads, and klb says which key is missing
    only_b = "only-b-" + secrets.token_hex(4)
    any_store(encryption_key=SecretStr(KEY_B)).save(only_b)
    code, out = klb(capsys, "--store", only_b, "verify", old.id)
    assert code == PROBLEM and "KEY MISSING" in out and key_id(KEY_A) in out
    assert KEY_A not in out and KEY_B not in out


def _documented_decrypt():
    """The `decrypt` function of docs/encryption-format.md, run as written."""
    text = (ROOT / "docs" / "encryption-format.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(code.split("\ncompressed = ", 1)[0], namespace)  # noqa: S102 - our own document
    return namespace["decrypt"]


def test_documented_format_decrypts_without_the_project(local_store):
    store = local_store(encryption_key=SecretStr(KEY_A))
    data = os.urandom(2 * CHUNK) + b"tail" * 1000  # several records, the last one short
    with backup_session(store, "app-state") as s:
        s.write("data", [data])
        s.commit()
    blob = backend_for(store).get_bytes(s.manifest.objects[0].key)
    compressed = _documented_decrypt()(blob, KEY_A)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(compressed) == data


def test_objects_written_before_key_ids_still_read_with_any_held_key():
    """KLBENC1 (no key id): the reader tries each key it holds."""
    salt, prefix = os.urandom(16), os.urandom(7)
    header = MAGIC_V1 + salt + prefix
    aead = AESGCM(derive_key(KEY_A, salt))
    data = os.urandom(CHUNK + 100)
    blob = header + aead.encrypt(prefix + struct.pack(">I?", 0, False), data[:CHUNK], header)
    blob += aead.encrypt(prefix + struct.pack(">I?", 1, True), data[CHUNK:], header)
    dec = Decoder(Compression.none, Encryption.aes256gcm, [KEY_B, KEY_A])
    assert dec.update(blob) + dec.finish() == data


def test_an_empty_previous_key_is_refused(local_store):
    store = local_store(encryption_key=SecretStr(KEY_B), previous_encryption_keys=[SecretStr("")])
    with pytest.raises(BadInput, match="previous_encryption_keys is empty"):
        preflight(store)
