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


# ids of records that are not backups: (what it is, where a person finds one)
RECORD_KINDS = {
    "restore": ("restore", "copy it from the restore's checklist artifact or its flow run's result"),
    "recovery-point": ("recovery point", "copy it from the backup-all run's result, or pass 'latest'"),
    "dr": ("full cluster restore run", "copy it from the full-cluster-restore run's report"),
}


def parse_record_id(record_id: str, kind: str) -> datetime:
    """The start time of a restore / recovery point / DR run id of that kind; a backup id, a
    path or anything else is refused with where to find a real one."""
    what, where = RECORD_KINDS[kind]
    if not isinstance(record_id, str) or not record_id:
        raise BadInput(f"empty {what} id: {where}")
    match = BACKUP_ID_RE.fullmatch(record_id)
    if not match or match["component"] != kind:
        raise BadInput(f"{record_id[:80]!r} is not a {what} id ({kind}-<YYYYMMDDTHHMMSSZ>-<6 hex>): {where}")
    return parse_backup_id(record_id)[1]


def check_object_name(name: str) -> str:
    if problem := object_name_problem(name):
        raise BadInput(problem)
    return name
