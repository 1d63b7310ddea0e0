"""`klb backup|restore|drill|plan`: run the flow here, or (`--deployment`) trigger its deployment
through the Prefect API and follow it to its end.

A triggered run carries an idempotency key: the same command given twice within the same minute
(a retried call, a double Enter) attaches to the first run instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tasks.errors import BadInput

# flow name / deployment name (prefect.yaml) per console verb
BACKUP_ONE = "backup-component/backup-{component}"
BACKUP_ALL = "backup-all/backup-now"
RESTORE = "restore-component/restore"
DRILL = "restore-drill/restore-drill-monthly"


def api_url() -> str | None:
    """The Prefect API these commands use, without credentials a URL may carry; None when
    PREFECT_API_URL is unset (Prefect then runs flows on a temporary local server)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def api_problem() -> str | None:
    """Why the Prefect API cannot be used, or None: asked before a flow runs or a deployment is
    triggered, so a server that is down is one clear line, not a traceback halfway through."""
    url = api_url()
    if url is None:
        return None
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    try:  # one try: the client's retries with backoff would keep the operator waiting ~10 s
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}), get_client(sync_client=True) as client:
            failure = client.api_healthcheck()
    except Exception as exc:
        failure = exc
    if failure is None:
        return None
    return (
        f"the Prefect API at {url} does not answer ({type(failure).__name__}): start the server or "
        "set PREFECT_API_URL to it (unset, flows run on a temporary local server); nothing was run"
    )


def lost_api(exc: BaseException) -> bool:
    """The Prefect API went away while a command ran (a connection error, Prefect's 'Failed to
    reach API'): the operator needs to know that, not a traceback."""
    import httpx

    return isinstance(exc, httpx.TransportError) or "Failed to reach API" in str(exc)


def idempotency_key(deployment: str, parameters: dict[str, Any], given: str | None = None) -> str:
    if given:
        return given
    body = json.dumps([deployment, parameters], sort_keys=True, default=str)
    minute = datetime.now(UTC).strftime("%Y%m%dT%H%M")
    return f"klb-{hashlib.sha256(body.encode()).hexdigest()[:16]}-{minute}"


def trigger(deployment: str, parameters: dict[str, Any], key: str | None, say) -> tuple[str, bool]:
    """Create (or attach to) the deployment's run, follow it until it is final: (summary, ok)."""
    from prefect.deployments import run_deployment

    idem = idempotency_key(deployment, parameters, key)
    say(f"klb: triggering deployment {deployment} (idempotency key {idem}) and following it ...")
    try:
        run = run_deployment(
            deployment, parameters=parameters, idempotency_key=idem, timeout=None, as_subflow=False
        )
    except Exception as exc:  # ObjectNotFound, unreachable API: say what to do
        if "not found" in str(exc).lower() or type(exc).__name__ == "ObjectNotFound":
            raise BadInput(
                f"no deployment {deployment!r} on the Prefect server: deploy prefect.yaml "
                "(`prefect deploy --all`, docs/deployments.md), or run here without --deployment"
            ) from None
        raise
    state = run.state
    ok = bool(state and state.is_completed())
    return f"flow run {run.name} ({run.id}): {state.name if state else 'unknown'}", ok


def backup(store_ref: str | None, component: str | None, target: str | None) -> tuple[str, bool]:
    from flows.backup import backup_all, backup_component

    if component:
        r = backup_component(component, target, store_ref, return_state=True)
        if not r.is_completed():
            return f"backup of {component} FAILED: {_message(r)}", False
        res = r.result()
        return f"{res.id}  {res.size} bytes stored  {'verified' if res.verified else 'unverified'}", True
    r = backup_all(store=store_ref, return_state=True)
    lines, ok = [], r.is_completed()
    if ok:
        res = r.result()
        lines += [f"{n:14} {b.id}" for n, b in res.backups.items()]
        lines += [f"{n:14} not configured: {e.splitlines()[0]}" for n, e in res.not_configured.items()]
    else:
        lines.append(f"backup FAILED: {_message(r)}")
    return "\n".join(lines), ok


def restore(
    store_ref: str | None, component: str, backup_id: str, target: str | None, options: dict | None
) -> tuple[str, bool]:
    from flows.restore import restore_component

    r = restore_component(component, backup_id, target, store_ref, options, return_state=True)
    if not r.is_completed():
        # the whole message: it says where the target stands (an app-state step restored before
        # one failed, a cut-over done for some databases); only a component's own mark says it
        # was not changed
        exc = _exception(r)
        unchanged = " (the target was not changed)" if getattr(exc, "target_untouched", False) else ""
        return f"restore of {component} FAILED{unchanged}: {exc or r.message or r.name}", False
    res = r.result()
    # its restore record: what `klb` and a rollback of an earlier checklist restore will see
    return f"restored {component} from {res['backup_id']}\nrestore record: {res['restore_id']}", True


def drill(store_ref: str | None, components: list[str] | None) -> tuple[str, bool]:
    from flows.drill import drill_report_text, last_drill_report, restore_drill
    from tasks.operations.drills import new_drill_id

    drill_id = new_drill_id()  # so a failed drill's report is its own, never an older one's
    r = restore_drill(components=components or None, store=store_ref, drill_id=drill_id, return_state=True)
    if r.is_completed():
        return drill_report_text(r.result()), True
    try:
        return last_drill_report(store_ref, drill_id) + f"\n{_message(r)}", False
    except Exception:  # it failed before its record was stored
        return f"drill {drill_id} FAILED: {_message(r)}", False


def plan(
    store_ref: str | None, recovery_point: str | None, backup_id: str | None, components: list[str] | None
) -> tuple[str, bool]:
    from flows.recovery import restore_plan
    from tasks.operations.plan import RestorePlan, plan_markdown

    r = restore_plan(recovery_point, backup_id, components or None, None, store_ref, return_state=True)
    if not r.is_completed():
        return f"plan FAILED: {_message(r)}", False
    return plan_markdown(RestorePlan.model_validate(r.result()), "Restore plan (dry run)"), True


def _exception(state) -> BaseException | None:
    try:
        state.result()
    except Exception as exc:
        return exc
    return None


def _message(state) -> str:
    try:
        state.result()
    except Exception as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return state.message or state.name
