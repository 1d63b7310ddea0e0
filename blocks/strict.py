"""Strict fields: a block (or a model inside one, or a flow parameter's model) refuses a field it
does not have. Prefect's Block allows any extra field and pydantic ignores one by default, so a
misspelt `require_aproval: true` gave a guard that asks nobody, and `encryption_kay` a store that
writes in clear, without a word. Here the misspelling is an error that names the field, suggests
the right one and lists them all; nothing has been saved or changed yet.

Inputs are hidden in the error text (`hide_input_in_errors`): pydantic would otherwise print the
whole input of a failed check, secrets given as plain strings included.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

# keys Prefect itself writes into a block's data (Block.model_dump adds the type's slug)
PREFECT_KEYS = frozenset({"block_type_slug"})


def unknown_fields(model: type[BaseModel], values: Any) -> Any:
    """`values` unchanged, or ValueError naming every key that is not a field of `model`."""
    if not isinstance(values, dict):
        return values
    fields = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    unknown = sorted(str(k) for k in values if k not in fields and k not in PREFECT_KEYS)
    if not unknown:
        return values
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(model.model_fields), n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(
        f"{model.__name__}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: "
        f"correct or remove it (a misspelt field is refused, never ignored); the fields are "
        f"{', '.join(model.model_fields)}"
    )


def without_credentials(url: str) -> str:
    """`url` unchanged, or ValueError if it carries a user or password (`http://u:pw@host`): a URL
    field is plain text, shown in the UI, stored in the block document and named by messages
    about its server; credentials belong in the block's username and password (secret) fields.
    The message does not echo the URL."""
    if urlsplit(url).username is not None:
        raise ValueError(
            "the URL carries credentials (user:password@): remove them and put them in the "
            "block's username and password fields, where the password is kept secret"
        )
    return url


def validation_problems(exc: ValidationError) -> str:
    """Each failed check as 'field: message', without the input (it may hold a secret), and a
    check of ours as its own words (no "Value error, " before them)."""

    def message(error: Any) -> str:
        raised = (error.get("ctx") or {}).get("error")
        return str(raised) if error["type"] == "value_error" and raised is not None else error["msg"]

    return "; ".join(
        ".".join(map(str, e["loc"])) + (": " if e["loc"] else "") + message(e) for e in exc.errors()
    )


class StrictBlock(Block):
    """Base of the project's blocks: unknown fields refused (Prefect's own keys allowed)."""

    model_config: ClassVar[ConfigDict] = ConfigDict(hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, values: Any) -> Any:
        return unknown_fields(cls, values)


class StrictModel(BaseModel):
    """Base of the models inside blocks and flow parameters (steps, windows, health checks)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, values: Any) -> Any:
        return unknown_fields(cls, values)
