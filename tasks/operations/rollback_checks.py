"""Whether a rollback may go ahead, and where: the restore changed something and has a safety
backup, it is not undone already (or is in force again through a rolled-back rollback), nothing
restored into the same target since, and the rollback goes into the target the restore went into.
What a rollback puts back is rollback.py's; `decide_rollback` makes every decision of one rollback
from the records as they are, and is asked again under the component lock.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from prefect.blocks.core import Block

from blocks.store import StoreBlock
from tasks.errors import BadInput
from tasks.models import Manifest
from tasks.operations.plan import target_label
from tasks.operations.restores import (
    CHANGED,
    RestoreRecord,
    load_restore_record,
    order_of,
    restore_record_from,
    target_digest,
    untouched,
)
from tasks.operations.rollback import created_by_restore, rollback_options
from tasks.storage.catalog import get_backup
from tasks.storage.layout import RESTORE_RECORD, RESTORES
from tasks.storage.records import iter_records
from tasks.verbs import check_restore, restore_options, wrote


class Rollback(NamedTuple):
    """What one rollback acts on: the safety backup, the restore options that put back exactly
    what the restore wrote (as recorded, and as shown for approval), those options checked, and
    what the restore created that the rollback leaves (listed)."""

    safety: Manifest
    options: dict[str, Any]
    checked: Any
    left: list[str]


def decide_rollback(store: StoreBlock, original: RestoreRecord, target: Block) -> Rollback:
    """Every decision of the rollback of `original` (as read now) into `target`, or BadInput
    changing nothing. Its record changes while it waits for the component lock (a restore
    'running' when asked ends and says what it wrote; another restore or rollback runs), so
    the rollback asks again under the lock, from the record read there, and acts on that answer."""
    check_rollback_allowed(original)
    check_nothing_later(store, original)
    safety = get_backup(store, original.safety_backup_id, original.component)
    check_same_target(original, target)
    # what the restore wrote to, overwritten from the safety backup (the defaults were not the
    # undo: Velero kept the restored objects, other databases/steps were put back too)
    given = rollback_options(
        store, original.component, original.backup_id, original.options, safety, original.report
    )
    checked = restore_options(original.component, given)
    check_restore(safety, target, store, given)  # refused now, not after the checklist
    # what the restore created is not in the safety backup: the rollback leaves it, and says so
    left = created_by_restore(
        store, original.component, original.backup_id, original.options, safety, original.report
    )
    return Rollback(safety, given, checked, left)


def check_rollback_allowed(record: RestoreRecord) -> None:
    """A rollback undoes a restore that changed something, and needs its safety backup. It puts
    back what the restore overwrote: one that overwrote nothing (it only created what was
    missing, as a Velero restore with existing_resource_policy none does) has nothing to put
    back, and the safety backup would only undo writes made since to what it never touched."""
    if record.via:  # restore_component, a DR scenario, rollback_postgres: no checklist, no safety backup
        raise BadInput(
            f"restore {record.id} ran outside the checklist ({record.via}): it took no safety backup, so "
            "there is nothing to roll back to; to undo it, restore an older backup of "
            f"{record.component} with restore_with_checklist (it takes a safety backup first); "
            "nothing was done"
        )
    if record.status == "nothing restored":
        why = (record.report or {}).get("note") or "every object it would restore was there already"
        raise BadInput(
            f"restore {record.id} wrote nothing to {record.component}: {why}. Putting its safety backup "
            "back would only undo writes made since; nothing was done"
        )
    if record.status not in CHANGED:
        raise BadInput(
            f"restore {record.id} is '{record.status}': it replaced nothing, so there is nothing to "
            "roll back; the current data stays as it is"
        )
    if untouched(record):
        how = "failed before it changed" if record.status == "failed" else "by its options wrote nothing to"
        raise BadInput(
            f"restore {record.id} {how} {record.component}: the target is as it "
            "was, and putting the safety backup back would only undo writes made since; nothing was done"
        )
    done = wrote(record.component, record.options, record.report)
    if done is not None and not done["overwritten"]:
        raise BadInput(
            f"restore {record.id} overwrote nothing that was there before it: it only created "
            f"{done['created']}, which its safety backup does not hold, and left everything else as it "
            "was. A rollback has nothing to put back, and would only undo writes made since to what the "
            "restore never touched; delete what it created by hand if it is not wanted; nothing was done"
        )
    if not record.safety_backup_id:
        raise BadInput(
            f"restore {record.id} took no safety backup (run with without_rollback=True): there is "
            "nothing to roll back to; restore an older backup with restore_with_checklist instead"
        )


def check_still_rolled_back(store: StoreBlock, record: RestoreRecord) -> None:
    """A 'rolled back' restore stays undone only while its rollback is in force: once that
    rollback was itself rolled back (and not rolled back again), the restore's data is in place
    again, and "already rolled back: nothing to do" would be a lie. BadInput naming the rollback
    to undo (the newest of the chain: it puts back the state without the restore)."""
    chain = _in_force_again(store, record)
    if chain:
        undone, newest = chain[-2], chain[-1]
        raise BadInput(
            f"restore {record.id} was rolled back by {record.rolled_back_by}, but {undone.id} was itself "
            f"rolled back by {newest.id} ('{newest.status}'): the restore's data is in place again. To "
            f"undo it, roll back that one: rollback_restore('{newest.id}'); nothing was done"
        )


def _in_force_again(store: StoreBlock, record: RestoreRecord) -> list[RestoreRecord]:
    """The chain record, its rollback, that one's rollback, ... when it leaves the 'rolled back'
    `record` in force again (an odd number of records); [] when it is undone."""
    chain, seen = [record], {record.id}
    while chain[-1].status == "rolled back" and chain[-1].rolled_back_by:
        nxt = load_restore_record(store, chain[-1].rolled_back_by)
        if nxt.id in seen:  # a loop only a forged chain of records makes
            break
        chain.append(nxt)
        seen.add(nxt.id)
    return chain if len(chain) % 2 == 1 and len(chain) > 1 else []


def check_nothing_later(store: StoreBlock, record: RestoreRecord) -> None:
    """A rollback puts back the state from before `record`: any restore (or rollback) into the
    same target since then would be undone too, without a word, while its record still says
    'restored'. They are rolled back first, newest first, each by its own id; a write made outside
    the checklist (its record's `via`: restore_component, a DR scenario, rollback_postgres) has no
    safety backup to roll it back with, so the refusal says to restore an older backup instead.
    "Since" is the order in which they held the component lock (order_of), never their ids."""
    # a record no key of the store signed (forged by a writer of the bucket) is left out, logged:
    # it must not stop the rollback of a real restore (storage/records.py iter_records)
    same = [
        other
        for key, data in iter_records(store, RESTORES, "/" + RESTORE_RECORD)
        if (other := restore_record_from(data, key.rsplit("/", 2)[-2])).component == record.component
        and other.target_digest == record.target_digest
        and other.id != record.id
    ]
    by_id = {other.id: other for other in same}
    since = order_of(record)
    later: dict[str, RestoreRecord] = {}
    for other in same:
        if order_of(other) <= since:
            continue
        # a later restore rolled back (its status), with the rollback that undid it: back to as before
        undone = by_id.get(other.rolls_back or "") if other.kind == "rollback" else None
        undoes_later = undone is not None and order_of(undone) > since
        if other.status in CHANGED and not untouched(other) and not undoes_later:
            later[other.id] = other
        elif other.status == "rolled back" and (chain := _in_force_again(store, other)):
            # its rollback was rolled back: its data is in place again, by the newest of the chain
            later[chain[-1].id] = chain[-1]
    if later:
        names = [r.id for r in sorted(later.values(), key=order_of)]  # the newest last
        said = f"{', '.join(names)} restored {record.component} into the same target after {record.id}"
        outside = [f"{r.id} ({r.via})" for r in later.values() if r.via]
        if outside:  # no safety backup: they cannot be rolled back first
            raise BadInput(
                f"{said}: rolling {record.id} back would silently undo them too. {', '.join(outside)} "
                "ran outside the checklist and took no safety backup, so it cannot be rolled back "
                f"first: to get back the state before {record.id}, restore an older backup of "
                f"{record.component} with restore_with_checklist; nothing was done"
            )
        raise BadInput(
            f"{said}: rolling {record.id} back would silently undo them too. Roll back the newest "
            f"first ({names[-1]}), then the others; nothing was done"
        )


def rollback_target(record: RestoreRecord, given: str | Block | None) -> str | Block | None:
    """Where a rollback goes: the target given, else the one the restore went into (by name),
    else the component's default (checked by `check_same_target`)."""
    return given if given not in (None, "") else record.target


def check_same_target(record: RestoreRecord, target: Block) -> None:
    """A rollback puts the safety copy back where it was taken, never into another target (the
    default one, when the restore went into a named one)."""
    if record.target_digest and record.target_digest != target_digest(target):
        raise BadInput(
            f"restore {record.id} went into {record.target or 'a target given as a block'}, and its "
            f"safety backup holds that target's data; {target_label(target)} is another target: pass "
            "the restore's own target (or none, when it had a name); nothing was done"
        )
