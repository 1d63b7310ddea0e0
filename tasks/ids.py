"""Backup ids and object names: safe as S3 keys and as path components, or rejected."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from blocks.names import object_name_problem
from tasks.errors import BadInput

COMPONENT_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
BACKUP_ID_RE = re.compile(r"^(?P<component>[a-z][a-z0-9-]*?)-(?P<ts>\d{8}T\d{6}Z)-(?P<rand>[0-9a-f]{6})$")
TS_FORMAT = "%Y%m%dT%H%M%SZ"


def check_component_name(name: str) -> str:
    if not isinstance(name, str) or not COMPONENT_RE.fullmatch(name):
        raise BadInput(f"invalid component name {name!r}: use lower-case letters, digits and single hyphens")
    return name


def new_backup_id(component: str, now: datetime | None = None) -> str:
    check_component_name(component)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{component}-{now.strftime(TS_FORMAT)}-{secrets.token_hex(3)}"


def parse_backup_id(backup_id: str) -> tuple[str, datetime]:
    """Return (component, start time) of a well-formed id; refuse anything else."""
    if not isinstance(backup_id, str) or not backup_id:
        raise BadInput("empty backup id: pass an id from the catalog, or 'latest'")
    match = BACKUP_ID_RE.fullmatch(backup_id)
    if not match:
        raise BadInput(
            f"malformed backup id {backup_id[:80]!r}: ids look like "
            "'postgres-20260115T143000Z-1a2b3c'; list them with `klb backups list`"
        )
    try:
        started = datetime.strptime(match["ts"], TS_FORMAT).replace(tzinfo=UTC)
    except ValueError:  # the right shape, an impossible date (2026-02-30, hour 25)
        raise BadInput(
            f"backup id {backup_id[:80]!r} names an impossible date/time {match['ts']!r}: copy the id "
            "exactly from `python -m flows.catalog list`"
        ) from None
    return match["component"], started


def check_object_name(name: str) -> str:
    if problem := object_name_problem(name):
        raise BadInput(problem)
    return name
