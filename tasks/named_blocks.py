"""Blocks loaded by name. Prefect says "Unable to load ... try validate=False" when a stored block
no longer validates (a field misspelt, renamed or out of range, blocks/strict.py); here that is
a ConfigurationError naming the block and what is wrong with it, and a block that does not exist
is None, for the caller to say what to create."""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block
from pydantic import ValidationError

from blocks.strict import validation_problems
from tasks.errors import ConfigurationError

B = TypeVar("B", bound=Block)


def load_named(cls: type[B], name: str) -> B | None:
    """The block `name` of type `cls` (`Block`: name is 'type-slug/name'), None if there is none."""
    try:
        return cls.load(name)
    except (ValueError, KeyError):  # Prefect: no such block document, or no such block type
        return None
    except RuntimeError as exc:
        if not isinstance(exc.__cause__, ValidationError):
            raise
        raise ConfigurationError(
            f"block {name!r} is stored with invalid fields ({validation_problems(exc.__cause__)}): "
            "correct it in the Prefect UI (Blocks) or with scripts/create_blocks.py; nothing was done"
        ) from None
