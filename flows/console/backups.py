"""`klb backups list|describe` and `klb verify`: the catalog, readable."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from blocks.store import StoreBlock
from flows.console.fmt import ago, human_bytes, table, when
from flows.console.known import Known, backups_of, known_state, objects_gone
from tasks.components.registry import SPECS
from tasks.errors import BackupError, IntegrityError, KeyNotHeld
from tasks.ids import parse_backup_id
from tasks.models import Manifest
from tasks.storage.catalog import get_backup, latest_candidates
from tasks.storage.layout import layout
from tasks.verbs import check_target, verify_component_backup


def kind(manifest: Manifest) -> str:
    """What sort of backup: scheduled, part of a backup-all run, a safety backup, ..."""
    labels = manifest.labels
    for key in ("kind", "batch", "trigger", "reason"):
        if labels.get(key):
            return labels[key]
    return "backup"


def list_text(store: StoreBlock, components: list[str]) -> str:
    now = datetime.now(UTC)
    rows = [("ID", "KIND", "TIME", "AGE", "SIZE", "STATUS", "EXPIRES")]
    for component in components:
        backups, damaged = backups_of(store, component)
        for m in backups:
            known = known_state(store, m)
            status = f"{known.status} {ago(known.when, now)}" if known.when else known.status
            if m.id in damaged:  # its objects are gone: whatever a past read found
                status = f"damaged: {damaged[m.id]}"
            expires = f"{when(m.expires_at)} ({ago(m.expires_at, now)})" if m.expires_at else "never"
            rows.append(
                (
                    m.id,
                    kind(m),
                    when(m.source_time),
                    ago(m.source_time, now),
                    human_bytes(m.size),
                    status,
                    expires,
                )
            )
        listed = {m.id for m in backups}
        rows += [
            (bid, "?", "-", "-", "-", "damaged: manifest unreadable", "-")
            for bid in sorted(damaged)
            if bid not in listed
        ]
    return table(rows) if len(rows) > 1 else "no backups"


def describe_text(store: StoreBlock, backup_id: str) -> str:
    m = get_backup(store, backup_id)
    known = known_state(store, m)
    # its objects gone: damaged, whatever a past read found (as `klb backups list` says)
    if gone := objects_gone(store, [m], layout(store).backup_dir(m.id)).get(m.id):
        known = Known("damaged", None, gone)
    lines = [
        f"backup      {m.id}",
        f"component   {m.component}",
        f"kind        {kind(m)}",
        f"folder      {store.location}/{layout(store).backup_dir(m.id).split('/', 1)[-1]}",
        f"source time {when(m.source_time)} ({ago(m.source_time)})",
        f"ran         {when(m.started_at)} -> {when(m.finished_at)} "
        f"({(m.finished_at - m.started_at).total_seconds():.1f}s)",
        f"size        {human_bytes(m.size)} stored, {human_bytes(m.raw_size)} raw, "
        f"{len(m.objects)} object(s)",
        f"status      {known.status}" + (f" {ago(known.when)} ({known.detail})" if known.when else ""),
        *([f"            {gone}"] if gone else []),
        f"expires     {when(m.expires_at)}" if m.expires_at else "expires     never",
    ]
    run = {k: v for k, v in m.labels.items() if k not in ("kind",)}
    if run:
        lines.append("labels      " + ", ".join(f"{k}={v}" for k, v in sorted(run.items())))
    if point := _recovery_point(m):
        lines.append(f"recovery    {point}")
    lines.append("objects:")
    rows = [("  NAME", "STORED", "RAW", "COMPRESSION", "ENCRYPTION", "SHA256")]
    for o in m.objects:
        rows.append(
            (
                f"  {o.name}",
                human_bytes(o.size),
                human_bytes(o.raw_size),
                str(o.compression),
                str(o.encryption),
                o.sha256[:16],
            )
        )
    lines.append(table(rows))
    if m.engine:
        lines.append("engine:")
        lines += [f"  {k}: {_short(v)}" for k, v in sorted(m.engine.items())]
    if m.fingerprint:
        lines.append("fingerprint:")
        lines += [f"  {k}: {_short(v)}" for k, v in sorted(m.fingerprint.items())]
    return "\n".join(lines)


def _recovery_point(m: Manifest) -> str:
    """The recovery point (backup-all run) this backup belongs to, and PITR's WAL position."""
    parts = [f"{k}={v}" for k, v in m.labels.items() if "recovery" in k]
    parts += [f"{k}={m.engine[k]}" for k in ("start_lsn", "stop_lsn", "timeline") if k in m.engine]
    return ", ".join(parts)


def _short(value: object, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    if isinstance(value, dict) and len(text) > limit:
        return (
            f"{len(value)} entries: "
            + ", ".join(sorted(map(str, value))[:6])
            + (", ..." if len(value) > 6 else "")
        )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def verify_text(store: StoreBlock, backup_id: str | None) -> tuple[str, bool]:
    """Read every object of one backup (or the newest of every component, and the one 'latest'
    restores where that is older) back and check it; then the component's own check: offline,
    but for kubernetes and volumes (Velero holds their data) Velero is asked whether it still
    holds the backup, Completed ($KLB_VELERO_TARGET)."""
    rows, ok = [("ID", "OBJECTS", "SIZE", "RESULT")], True
    if backup_id:
        try:
            manifests = [get_backup(store, backup_id)]
        except IntegrityError as exc:  # its manifest (signature, checksum) is what failed
            return table(rows + [(backup_id, "?", "?", _problem(exc))]), False
    else:
        manifests = []
        for component in SPECS:
            backups, damaged = backups_of(store, component)
            newest = parse_backup_id(backups[-1].id)[1] if backups else None
            # a manifest that no longer reads is left out of the listing: when it is (one of) the
            # newest, the backup behind it verifying must not make the answer 'verified'
            listed = {m.id for m in backups}  # those are verified below, whole
            for bid, why in sorted(damaged.items()):
                if bid not in listed and (newest is None or parse_backup_id(bid)[1] >= newest):
                    ok = False
                    rows.append((bid, "?", "?", f"DAMAGED: manifest unreadable: {why}"))
            # the newest backup, and the one 'latest' restores when that is another (a newer
            # safety or forensic backup, or one dated in the future, is never 'latest')
            restorable = latest_candidates(backups, datetime.now(UTC))
            picked = {m.id for m in restorable[-1:]} | {m.id for m in backups[-1:]}
            manifests += [m for m in backups if m.id in picked]
    if not manifests and ok:
        return "no backups to verify", True
    for m in manifests:
        try:
            verify_component_backup(m, store, check_target(m.component, None))
            result = "verified"
        except BackupError as exc:
            ok, result = False, _problem(exc)
        rows.append((m.id, str(len(m.objects)), human_bytes(m.size), result))
    return table(rows), ok


def _problem(exc: BackupError) -> str:
    if isinstance(exc, KeyNotHeld):
        return f"KEY MISSING: {exc}"
    return f"{'DAMAGED' if isinstance(exc, IntegrityError) else 'FAILED'}: {exc}"
