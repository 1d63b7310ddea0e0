"""Names that end up in store keys and paths: safe as S3 keys and path components, or rejected.

Blocks validate with these (a plain ValueError, as pydantic wants); tasks/ids.py raises the
project's BadInput with the same message.
"""

from __future__ import annotations

import re

OBJECT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def object_name_problem(name: object) -> str | None:
    """Why `name` cannot name a stored object, or None when it can."""
    if not isinstance(name, str) or not OBJECT_NAME_RE.fullmatch(name) or ".." in name:
        return f"invalid object name {name!r}: use letters, digits, '.', '_' and '-' (no '/' or '..')"
    if ".partial-" in name:  # the local store's in-flight writes: it lists none of them
        return f"invalid object name {name!r}: '.partial-' marks a write in progress; choose another name"
    return None
