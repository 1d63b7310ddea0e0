"""The human approval of a restore: a paused flow run whose form carries the decision.

The form (a Prefect RunInput) shows what is about to happen — the backup and whether a newer one
exists, the target and what it holds now, the real action for this component, the safety backup
already taken, every checklist answer, the deadline — and asks for an explicit choice, a name,
and a reason for a rejection. The server validates the answer against the form's JSON schema.

`wait_for_decision` pauses the run like `prefect.flow_runs.pause_flow_run`, but also notices a
cancellation while paused (Prefect's own loop keeps polling until its timeout), so a cancelled
restore ends at once, with its record.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.input import RunInput
from prefect.input.run_input import keyset_from_paused_state
from prefect.states import Paused
from prefect.utilities.engine import propose_state_sync
from pydantic import ConfigDict, Field

from tasks.errors import BackupError
from tasks.markdown import cell
from tasks.models import Manifest
from tasks.operations.checklist import ITEMS, SHOWN, ChecklistLine, Mark, Refused

ITEM = ITEMS[6]


class Approval(RunInput):
    """The answer to a paused restore. `reason` is required when rejecting (schema `if`/`then`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"decision": {"const": "reject"}}, "required": ["decision"]},
            "then": {"properties": {"reason": {"minLength": 3}}, "required": ["reason"]},
        }
    )

    decision: Literal["approve", "reject"] = Field(
        title="Decision",
        description="approve: the restore runs now, exactly as described above. "
        "reject: nothing more is changed and the run ends as refused.",
    )
    by: str = Field(
        title="Your name",
        min_length=2,
        pattern=r"\S",
        description="who decides (a person, not a team); written in the restore record",
    )
    reason: str = Field(
        default="",
        title="Reason",
        description="why; required when you reject, optional when you approve",
    )


class RestoreCancelled(BackupError):
    """The run was cancelled while it waited for approval; nothing was restored."""


def form_markdown(
    restore_id: str,
    manifest: Manifest,
    newer: Manifest | None,
    target_label: str,
    now_there: str,
    action: str,
    safety: Manifest | None,
    checklist: list[ChecklistLine],
    deadline: datetime,
    options: dict[str, Any] | None = None,
) -> str:
    """The form's description. Lists, not wide tables: it must fit the Resume dialog."""
    age_h = manifest.age() / 3600
    out = [
        f"### Restore {manifest.component} from `{manifest.id}`?",
        "",
        f"**Decide by {deadline:%H:%M:%S} UTC** ({deadline:%Y-%m-%d}); no answer by then = refused.",
        "",
        f"- **Backup:** `{manifest.id}`, data from {manifest.source_time:%Y-%m-%d %H:%M:%S} UTC "
        f"({age_h:.2f} h old), {size(manifest.raw_size)}, {len(manifest.objects)} object(s)",
    ]
    if newer is not None:
        out.append(
            f"- ⚠️ **A newer backup exists:** `{newer.id}` (data from "
            f"{newer.source_time:%Y-%m-%d %H:%M:%S} UTC); this restore does not use it"
        )
    out += [
        f"- **Into:** {target_label}",
        f"- **There now:** {now_there}",
        f"- **Action:** {action}",
        "- **Options:** "
        + (
            "; ".join(f"`{k}` = `{json.dumps(v, ensure_ascii=False)}`" for k, v in options.items())
            if options
            else "none: the component's defaults (everything in the backup)"
        ),
        "- **Safety backup:** "
        + (
            f"`{safety.id}` ({size(safety.raw_size)}), taken and verified; undo with "
            f"`rollback_restore('{restore_id}')`"
            if safety
            else "⚠️ none (without_rollback): this restore cannot be undone"
        ),
        f"- **Restore id:** `{restore_id}`",
        "",
        "**Checklist so far**",
        "",
    ]
    out += [f"- {cell(line.item)}: {SHOWN[line.mark]}: {cell(line.detail)}" for line in checklist]
    return "\n".join(out) + "\n"


def size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


def wait_for_decision(description: str, timeout: int, key: str, poll: float = 2.0) -> Approval | None:
    """Pause this flow run for the form; None when nobody answered in time. Raises
    RestoreCancelled when the run is cancelled while paused.

    `key` (the restore's id) names the form and its answer: each restore asks anew. With one key
    for every pause, a retried run (the UI's Retry, flow retries: the same flow run) could not
    pause again (its form is stored already: 409), and could have read the earlier answer."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("an approval can only be asked from inside a flow run")
    form = Approval.with_initial_data(description=description)
    # run-input keys take lower-case letters, digits and dashes only
    pause_key = "restore-approval-" + re.sub(r"[^a-z0-9-]", "-", key.lower())
    proposed = Paused(timeout_seconds=timeout, reschedule=False, pause_key=pause_key)
    keyset = keyset_from_paused_state(proposed)
    proposed.state_details.run_input_keyset = keyset
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        state = propose_state_sync(client=client, state=proposed, flow_run_id=context.flow_run.id)
        if not state.is_paused():
            raise RuntimeError(f"the run could not be paused for approval (state {state.type.value})")
        form.save(keyset)
        while True:
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
            current = client.read_flow_run(context.flow_run.id).state
            if current is not None and current.is_running():
                return form.load(keyset)
            if current is not None and current.type in (StateType.CANCELLING, StateType.CANCELLED):
                raise RestoreCancelled("the run was cancelled while it waited for approval")
            if time.monotonic() >= deadline:
                return None


def decide(description: str, timeout: int, key: str) -> tuple[ChecklistLine, str]:
    """The approval item: (its line, who approved), or Refused with the line saying why."""
    answer = wait_for_decision(description, timeout, key, poll=min(2.0, timeout / 2))
    if answer is None:
        line = ChecklistLine(item=ITEM, mark=Mark.refused, detail=f"no answer within {timeout} s: refused")
        raise Refused(line)
    who = answer.by.strip()
    if answer.decision == "reject":
        why = answer.reason.strip() or "no reason given"
        raise Refused(ChecklistLine(item=ITEM, mark=Mark.refused, detail=f"rejected by {who}: {why}"))
    detail = f"approved by {who}" + (f": {answer.reason.strip()}" if answer.reason.strip() else "")
    return ChecklistLine(item=ITEM, mark=Mark.ok, detail=detail), who


def deadline_of(timeout: int) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=timeout)
