"""Recovery points: the backups of one `backup_all` run, bound together so a restore (or a
drill, or a full cluster restore) can bring back one consistent set.

A recovery point is its own small record, not a component: it holds no data, only the ids and
source times of its members. It is written after every member's manifest (last, like a
manifest), at <prefix>/recovery-points/<YYYY-MM-DD>/<rp-id>.json. Each member manifest also
carries `labels["recovery_point"] = <rp-id>`, so retention can keep whole recovery points.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, Field, field_validator

from blocks.store import StoreBlock
from tasks.errors import BadInput, IntegrityError, NotFound
from tasks.ids import new_backup_id, parse_backup_id
from tasks.models import Manifest
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup
from tasks.storage.health import Status, finding, is_damage, mark_damaged, mark_verified
from tasks.storage.layout import RECOVERY_POINTS, layout
from tasks.storage.records import get_record, put_record

SPACE = RECOVERY_POINTS
RP_COMPONENT = "recovery-point"  # the id's prefix: recovery-point-20260115T143000Z-1a2b3c
LABEL = "recovery_point"
log = logging.getLogger(__name__)


class Member(BaseModel):
    backup_id: str
    source_time: AwareDatetime


class RecoveryPoint(BaseModel):
    schema_version: int = 1
    id: str
    created_at: AwareDatetime
    members: dict[str, Member] = Field(description="component -> its backup in this point")
    failed: dict[str, str] = Field(default_factory=dict, description="component -> why it is missing")
    not_configured: dict[str, str] = Field(default_factory=dict)
    checksum: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if parse_backup_id(value)[0] != RP_COMPONENT:
            raise ValueError(f"{value!r} is not a recovery point id")
        return value

    @property
    def complete(self) -> bool:
        """Every component that was asked for is in it."""
        return bool(self.members) and not self.failed

    @property
    def source_time(self) -> datetime:
        """The oldest member's source time: the point's data is at least this old."""
        return min(m.source_time for m in self.members.values())

    def computed_checksum(self) -> str:
        return hashlib.sha256(self.model_dump_json(exclude={"checksum"}).encode()).hexdigest()


def new_recovery_point_id(now: datetime | None = None) -> str:
    return new_backup_id(RP_COMPONENT, now)


def _key(store: StoreBlock, rp_id: str) -> str:
    return layout(store).recovery_point_key(rp_id)


def write_recovery_point(
    store: StoreBlock,
    rp_id: str,
    manifests: dict[str, Manifest],
    failed: dict[str, str] | None = None,
    not_configured: dict[str, str] | None = None,
) -> RecoveryPoint:
    """Bind `manifests` (already stored, each labelled with rp_id) into one recovery point."""
    for component, manifest in manifests.items():
        if manifest.labels.get(LABEL) != rp_id:
            raise BadInput(f"backup {manifest.id} is not labelled as a member of {rp_id}")
        if manifest.component != component:
            raise BadInput(f"backup {manifest.id} is not a {component} backup")
    rp = RecoveryPoint(
        id=rp_id,
        created_at=datetime.now(UTC),
        members={c: Member(backup_id=m.id, source_time=m.source_time) for c, m in manifests.items()},
        failed=dict(failed or {}),
        not_configured=dict(not_configured or {}),
    )
    rp = rp.model_copy(update={"checksum": rp.computed_checksum()})
    put_record(store, _key(store, rp_id), rp)
    return rp


def _load(data: dict, where: str, rp_id: str) -> RecoveryPoint:
    """The record stored under `rp_id`'s key: intact, and naming that very point (a record copied
    over another's must never stand in for it, as a manifest cannot)."""
    try:
        rp = RecoveryPoint.model_validate(data)
    except ValueError as exc:
        raise IntegrityError(f"recovery point {where} is unreadable: {str(exc)[:200]}") from None
    if rp.checksum != rp.computed_checksum():
        raise IntegrityError(f"recovery point {where} was altered: its checksum does not match")
    if rp.id != rp_id:
        raise IntegrityError(
            f"recovery point {where} names another point, {rp.id}: it was copied; use the point you "
            "want by its own id"
        )
    return rp


def scan_recovery_points(store: StoreBlock) -> tuple[list[RecoveryPoint], dict[str, str]]:
    """(readable points oldest first, {id: why} of records that cannot be used). A damaged record
    (or one whose signature does not match: storage/signing.py) is recorded as damaged
    (storage/health.py), never just dropped; an unsigned one, or one signed by a key the store
    lacks, is not proof of damage: left out, not recorded. Either way a newer one stops
    'latest' (latest_recovery_point)."""
    points, damaged = [], {}
    for key in backend_for(store).list_keys(layout(store).records_dir(SPACE)):
        if not key.endswith(".json"):
            continue
        rp_id = key.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            points.append(_load(get_record(store, key), key, rp_id))
        except (IntegrityError, NotFound) as exc:
            damaged[rp_id] = str(exc)
            if is_damage(exc):
                mark_damaged(store, rp_id, str(exc))
            else:
                log.error("recovery point left out: %s", exc)
    return sorted(points, key=lambda p: (p.created_at, p.id)), damaged


def list_recovery_points(store: StoreBlock) -> list[RecoveryPoint]:
    """Oldest first. A damaged record is left out (and recorded as damaged)."""
    return scan_recovery_points(store)[0]


def _started(rp_id: str) -> datetime | None:
    try:
        return parse_backup_id(rp_id)[1]
    except BadInput:
        return None


# a recovery point -> None when its members cover the scope asked for, else what they lack
PointGap = Callable[["RecoveryPoint"], str | None]


def _covering(store: StoreBlock, complete: list[RecoveryPoint], gap: PointGap | None) -> list[RecoveryPoint]:
    """`complete` up to its newest point whose members cover the scope asked for (`gap`, from
    operations/scope.py: a point taken by narrower targets is never 'latest' of the whole); none
    covers it: NotFound naming them."""
    if gap is None:
        return complete
    skipped = []
    for index in range(len(complete) - 1, -1, -1):  # newest first; members read only as needed
        why = gap(complete[index])
        if why is None:
            if skipped:
                log.warning(
                    "'latest' recovery point is %s; newer ones are narrower: %s", complete[index].id, skipped
                )
            return complete[: index + 1]
        skipped.append(f"{complete[index].id} ({why})")
    raise NotFound(
        f"no complete recovery point in {store.location} covers the targets asked for: "
        + "; ".join(skipped[:5])
        + ". Use one of them by id if that narrower scope is what you want, or run backup-all with "
        "the whole targets"
    )


def latest_recovery_point(store: StoreBlock, gap: PointGap | None = None) -> RecoveryPoint:
    """The newest complete recovery point (with `gap`, that covers the targets asked for). If a
    newer one is damaged (its record, or a member, as found by the sweep or a failed read), fail
    naming it: never an older point in silence."""
    points, damaged = scan_recovery_points(store)
    complete = [p for p in points if p.complete]
    if not complete:  # the ones that cannot be used are named: unsigned ones after an upgrade, say
        unusable = (
            f" ({len(damaged)} cannot be used; the newest, {max(damaged)}: {damaged[max(damaged)]})"
            if damaged
            else ""
        )
        raise NotFound(
            f"no complete recovery point in {store.location}{unusable}: run the backup-all flow first"
        )
    complete = _covering(store, complete, gap)
    newest = complete[-1]
    known = finding(store, newest.id)
    if known is not None and known.status == Status.damaged:
        damaged[newest.id] = known.reason
    # a member found damaged (a restore's or `klb verify`'s read) damages its point at once: the
    # sweep records that on the point only later, and a restore of the point would fail midway
    if newest.id not in damaged and (why := _member_damage(store, newest)):
        damaged[newest.id] = why
    since = _started(newest.id)
    # the same second as the newest: ids cannot tell which is newer, so it blocks too (never an
    # older point in silence)
    blocking = {i: why for i, why in damaged.items() if i == newest.id or ((_started(i) or since) >= since)}
    if blocking:
        worst = max(blocking)
        good = next(
            (p for p in reversed(complete) if p.id not in damaged and not _member_damage(store, p)), None
        )
        fallback = (
            f"the newest one not known damaged is {good.id}: use it by id if older data is acceptable"
            if good
            else "no older complete point is known good either"
        )
        raise IntegrityError(
            f"the newest recovery point {worst} is damaged ({blocking[worst][:300]}); 'latest' will "
            f"not silently use an older one: {fallback}, or run backup-all"
        )
    return newest


def _member_damage(store: StoreBlock, rp: RecoveryPoint) -> str | None:
    """Why `rp` cannot be restored whole: a member recorded damaged (storage/health.py), or None."""
    for component, member in sorted(rp.members.items()):
        known = finding(store, member.backup_id)
        if known is not None and known.status == Status.damaged:
            return f"its {component} member {member.backup_id} is damaged: {known.reason[:200]}"
    return None


def get_recovery_point(
    store: StoreBlock, rp_id: str = "latest", gap: PointGap | None = None
) -> RecoveryPoint:
    """A recovery point by id, or 'latest': the newest complete one (see latest_recovery_point)."""
    if rp_id == "latest":
        return latest_recovery_point(store, gap)
    key = _key(store, rp_id)
    try:
        return _load(get_record(store, key), rp_id, rp_id)
    except NotFound:
        raise NotFound(
            f"no recovery point {rp_id} in {store.location}: list them with list_recovery_points()"
        ) from None
    except IntegrityError as exc:
        if exc.proves_damage:  # not an unsigned record, nor a key the store lacks
            mark_damaged(store, rp_id, str(exc))
        raise


def check_recovery_point(store: StoreBlock, rp: RecoveryPoint) -> None:
    """The sweep's check: every member is there, carries the point's label, and is not known
    damaged. Records the finding under the point's id; raises IntegrityError naming the problem."""
    read_from = datetime.now(UTC)
    try:
        for component, manifest in member_manifests(store, rp).items():
            known = finding(store, manifest.id)
            if known is not None and known.status == Status.damaged:
                raise IntegrityError(f"its {component} member {manifest.id} is damaged: {known.reason[:200]}")
    except (IntegrityError, NotFound) as exc:
        mark_damaged(store, rp.id, f"recovery point {rp.id}: {exc}")
        raise IntegrityError(f"recovery point {rp.id}: {exc}") from None
    mark_verified(store, rp.id, read_from)


def member_manifests(store: StoreBlock, rp: RecoveryPoint) -> dict[str, Manifest]:
    """The members' manifests, checked to really belong to this point."""
    out = {}
    for component, member in rp.members.items():
        manifest = get_backup(store, member.backup_id, component)
        if manifest.labels.get(LABEL) != rp.id:
            raise IntegrityError(f"backup {manifest.id} does not carry the label of recovery point {rp.id}")
        out[component] = manifest
    return out
