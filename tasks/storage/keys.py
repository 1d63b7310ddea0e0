"""The store's encryption keys as secrets: the one it writes with, and every one it reads with.
The objects' encryption (codec.py), the health records' and the manifests' signatures
(health.py, signing.py) all start here."""

from __future__ import annotations

from blocks.store import StoreBlock
from tasks.errors import BadInput


def current_secret(store: StoreBlock) -> str | None:
    """The key new objects are encrypted and new manifests signed with (None: no key)."""
    if store.encryption_key is None:
        return None
    secret = store.encryption_key.get_secret_value()
    if not secret:  # an empty key (an unset env var?) must not silently mean "unencrypted"
        raise BadInput(
            "the store's encryption_key is empty: set the secret, or remove the field to store unencrypted"
        )
    return secret


def read_keys(store: StoreBlock) -> list[str]:
    """Every key the store can read with: the current one first, then the older ones."""
    keys = [s for s in [current_secret(store)] if s]
    for old in store.previous_encryption_keys:
        secret = old.get_secret_value()
        if not secret:
            raise BadInput("an entry of the store's previous_encryption_keys is empty: remove it")
        keys.append(secret)
    return keys
