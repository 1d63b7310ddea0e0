"""The retention plan as a person reads it: the `retention-plan` artifact (totals, every deletion
and orphan with its reason, the leftovers of failed writes, and what S3 Object Lock keeps)."""

from __future__ import annotations

from tasks.storage.retention_types import Action, RetentionPlan


def plan_markdown(
    plans: list[RetentionPlan],
    dry_run: bool,
    limit: int = 200,
    incomplete: dict[str, list[str]] | None = None,
) -> str:
    """The plan as an artifact: totals, then every deletion and every orphan (capped), then the
    leftovers of failed writes (partial files, open multipart uploads) the sweep removes."""
    head = "DRY RUN: nothing was deleted" if dry_run else "APPLIED"
    lines = [
        f"# Retention plan ({head})",
        "",
        "| component | backups | keep | delete | orphans gc | orphans left |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for p in plans:
        c = p.counts()
        lines.append(
            f"| {p.component} | {c['backups']} | {c['keep']} | {c['delete']} | "
            f"{c['orphan_dirs_deleted']} | {c['orphan_dirs_left']} |"
        )
    lines += [
        "",
        "| component | backup | kind | source time | good | action | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = 0
    for p in plans:
        interesting = [d for d in p.decisions if d.action == Action.delete] or p.decisions[-1:]
        for d in interesting:
            if rows >= limit:
                break
            rows += 1
            lines.append(
                f"| {p.component} | {d.id} | {d.kind} | {d.source_time:%Y-%m-%d %H:%M} | "
                f"{'yes' if d.good else 'no'} | "
                f"{d.action} | {d.reason} |"
            )
        for o in p.orphans:
            if rows >= limit:
                break
            rows += 1
            lines.append(f"| {p.component} | {o.backup_dir} (no manifest) | | | | {o.action} | {o.reason} |")
    if rows >= limit:
        lines.append(f"\n(first {limit} rows shown; the flow's result has every decision)")
    leftovers = [(c, k) for c, keys in (incomplete or {}).items() for k in keys]
    verb = "would remove" if dry_run else "removes"
    lines += ["", f"## Leftovers of failed writes the sweep {verb}: {len(leftovers)}", ""]
    lines += [f"- {c}: `{k}`" for c, k in leftovers[:limit]]
    return "\n".join(lines) + "\n"


def locks_markdown(plans: list[RetentionPlan]) -> str:
    """What retention left alone because it is locked, and until when (dry run and applied)."""
    rows = [
        f"| {p.component} | {d.id} | {d.lock_note()} |" for p in plans for d in p.decisions if d.lock_note()
    ] + [
        f"| {p.component} | {o.backup_dir} (no manifest) | {o.lock_note()} |"
        for p in plans
        for o in p.orphans
        if o.lock_note()
    ]
    if not rows:
        return ""
    head = [
        "",
        "## Past retention but locked (S3 Object Lock): not deleted",
        "",
        "| component | backup | locked until |",
    ]
    return "\n".join([*head, "|---|---|---|", *rows]) + "\n"
