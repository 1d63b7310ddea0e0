"""List chunking, as the apiserver does it (api-concepts "Retrieving large results sets in
chunks"): `limit` returns at most that many items and a `continue` token when more remain (with
`remainingItemCount`); the token resumes after the last item returned. A token that is not one
of ours is a 400; one older than the store's compaction would be a 410 (the emulator keeps
everything, so it never expires).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from sandbox.k8s_emulator.errors import ApiError


def _key(item: dict[str, Any]) -> list[str]:
    meta = item["metadata"]
    return [meta.get("namespace") or "", meta["name"]]


def page(items: list[dict[str, Any]], query: dict[str, str], revision: int) -> tuple[list[dict], dict]:
    """-> (the items of this chunk, the list's metadata). `items` come sorted by (namespace, name)."""
    meta: dict[str, Any] = {"resourceVersion": str(revision)}
    token = query.get("continue")
    if token:
        try:
            after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise ApiError(400, "BadRequest", "continue key is not valid: incorrect encoded start") from None
        items = [i for i in items if _key(i) > after]
    try:
        limit = int(query.get("limit") or 0)
    except ValueError:
        raise ApiError(400, "BadRequest", f"limit: invalid value {query.get('limit')!r}") from None
    if limit > 0 and len(items) > limit:
        meta["remainingItemCount"] = len(items) - limit
        items = items[:limit]
        meta["continue"] = base64.urlsafe_b64encode(json.dumps({"after": _key(items[-1])}).encode()).decode()
    return items, meta
