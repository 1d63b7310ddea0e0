"""What a stored base backup must hold to count, and whether the archive can carry a recovery on.

The catalog's check (every object's sha256) proves the bytes are the ones written; it cannot
tell that what pg_basebackup wrote is a base backup a recovery can start from. Read here:
- base.tar is one whole tar (header checksums, the end-of-archive block: a tar cut at a member
  boundary reads as a valid, shorter one);
- its backup_label says the start LSN and timeline the manifest records;
- every file pg_basebackup's own backup_manifest lists is in it, with its size;
- the WAL it fetched (-X fetch) from the start segment to the stop point is in pg_wal/, whole:
  without it the copied files are never consistent;
- with a target: the archive still holds the segment where the backup ends (a recovery replays
  on from there). Lost while later WAL is archived, the backup can recover nothing: damage. Not
  archived yet (nothing later is), it is pending, not damage: pg_basebackup -X fetch does not
  wait for archiving.
A failure is IntegrityError (recorded as damage: the window and 'latest' then skip the backup).
"""

from __future__ import annotations

import json
import re
from typing import Any

from blocks.pitr import PitrTarget
from blocks.store import StoreBlock
from tasks.components.postgres_pitr.engines import (
    engine_for,
    is_segment,
    parse_lsn,
    segment_name,
    segment_number,
    segment_of,
)
from tasks.components.postgres_pitr.tar import TarPeek
from tasks.errors import IntegrityError
from tasks.models import Manifest
from tasks.storage.session import read_object

BASE_OBJECT = "base.tar"
REQUIRED = ("start_lsn", "stop_lsn", "timeline", "end_time", "archive_url", "wal_segment_size")


def parse_label(text: str) -> dict[str, Any]:
    """Start LSN, its segment and the timeline from pg_basebackup's backup_label."""
    start = re.search(r"START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)", text)
    tli = re.search(r"START TIMELINE: (\d+)", text)
    if not start or not tli:
        raise IntegrityError("pg_basebackup's backup_label is not readable: the base backup is unusable")
    return {"start_lsn": start[1], "start_segment": start[2], "timeline": int(tli[1])}


def _damaged(manifest: Manifest, why: str) -> IntegrityError:
    return IntegrityError(
        f"base backup {manifest.id} cannot be recovered: {why}. Recover from another base backup "
        "(leave backup_id empty: the flow picks one that is sound) or take a new one "
        "(backup_component('postgres-pitr'))"
    )


def check_contents(manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
    """Read base.tar whole (sha256 checked again at its end) and check what it holds."""
    e = manifest.engine
    missing = [k for k in REQUIRED if k not in e]
    if missing:
        raise IntegrityError(f"base backup {manifest.id} lacks {missing} in its manifest")
    peek = TarPeek({"backup_label", "backup_manifest"})
    for chunk in read_object(store, manifest.object(BASE_OBJECT)):
        peek.feed(chunk)
    if problem := peek.problem():
        raise _damaged(manifest, f"{BASE_OBJECT} is not a readable tar: {problem}")
    if "backup_label" not in peek.found:
        raise _damaged(manifest, f"{BASE_OBJECT} holds no backup_label")
    try:
        label = parse_label(peek.found["backup_label"].decode(errors="replace"))
    except IntegrityError as exc:
        raise _damaged(manifest, str(exc)) from None
    if (label["start_lsn"], label["timeline"]) != (e["start_lsn"], e["timeline"]):
        raise _damaged(
            manifest,
            f"its backup_label starts at LSN {label['start_lsn']} on timeline {label['timeline']}, its "
            f"manifest says LSN {e['start_lsn']} on timeline {e['timeline']}",
        )
    files = 0
    if e.get("pg_manifest"):
        if "backup_manifest" not in peek.found:
            raise _damaged(manifest, f"{BASE_OBJECT} lacks pg_basebackup's backup_manifest")
        try:
            listed = json.loads(peek.found["backup_manifest"])["Files"]
        except (ValueError, KeyError, TypeError):
            raise _damaged(manifest, "its backup_manifest is not readable") from None
        wrong = [f["Path"] for f in listed if peek.members.get(f["Path"]) != f["Size"]]
        if wrong:
            raise _damaged(
                manifest,
                f"{len(wrong)} files its backup_manifest lists are missing or of another size: {wrong[:5]}",
            )
        files = len(listed)
    # pg_basebackup fetches from the start segment to the one before the stop point's end
    seg, tli = e["wal_segment_size"], e["timeline"]
    first = segment_of(parse_lsn(e["start_lsn"]), seg)
    last = segment_of(parse_lsn(e["stop_lsn"]) - 1, seg)
    wal = [segment_name(tli, n, seg) for n in range(first, last + 1)]
    lacking = [w for w in wal if peek.members.get(f"pg_wal/{w}") != seg]
    if lacking:
        raise _damaged(
            manifest,
            f"the WAL it needs to be consistent is missing or short in {BASE_OBJECT}: pg_wal/{lacking[0]}",
        )
    return {"tar_members": len(peek.members), "manifest_files": files, "wal_in_tar": wal}


def check_archive(target: PitrTarget, manifest: Manifest) -> str:
    """Whether the archive holds the segment where the base backup ends: 'archived', 'pending'
    (not archived yet) or 'not checked' (another server's), or IntegrityError (lost, with later
    WAL archived)."""
    e = manifest.engine
    if (e["archive_url"], e.get("server_name")) != (target.archive_url, target.server_name):
        # a store may hold base backups of several servers; the sweep has one default target
        return f"not checked: taken for {e['archive_url']} ({e.get('server_name')}), not the target's archive"
    seg, tli = e["wal_segment_size"], e["timeline"]
    stop = segment_of(parse_lsn(e["stop_lsn"]), seg)
    on_timeline = [
        n
        for t, n in (segment_number(w, seg) for w in engine_for().list_wal(target) if is_segment(w))
        if t == tli
    ]
    if stop in on_timeline:
        return "archived"
    if any(n > stop for n in on_timeline):
        raise _damaged(
            manifest,
            f"the WAL archive {target.archive_url} lacks segment {segment_name(tli, stop, seg)}, where it "
            "ends, though later WAL is archived: replay cannot go on from it",
        )
    return "pending"
