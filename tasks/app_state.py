"""Application state from custom scripts: stdout is the state; restore feeds it on stdin.

The reference component: the smallest complete implementation of the contract in
tasks/components.py.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, Field

from blocks.app_state import AppStateTarget
from blocks.store import StoreBlock
from tasks.errors import BadInput, ConfigurationError
from tasks.models import Manifest
from tasks.proc import feed_stdin, stream_stdout
from tasks.store import BackupSession, read_object, verify_object

Target = AppStateTarget


def default_target() -> AppStateTarget:
    ref = os.environ.get("KLB_APP_STATE_TARGET")
    if ref:
        return AppStateTarget.load(ref)
    raise ConfigurationError(
        "no app-state target: create a 'klb-app-state-target' block and pass its name, "
        "or set KLB_APP_STATE_TARGET"
    )


def backup(target: AppStateTarget, session: BackupSession) -> None:
    for step in target.steps:
        with stream_stdout(
            step.backup_command,
            step.environment(),
            step.cwd,
            step.timeout_seconds,
            f"app-state {step.name}",
            redact=step.secret_values(),
        ) as out:
            session.write(step.name, out, meta={"command": step.backup_command[0]})
    session.engine["steps"] = [s.name for s in target.steps]


def verify(target: AppStateTarget | None, manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
    return {"steps": [o.name for o in manifest.objects]}


class RestoreOptions(BaseModel):
    steps: list[str] | None = Field(default=None, description="restore only these steps (default: all)")


def restore(
    target: AppStateTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    by_name = {s.name: s for s in target.steps}
    wanted = options.steps or [o.name for o in manifest.objects]
    unknown = [n for n in wanted if n not in by_name or n not in {o.name for o in manifest.objects}]
    if unknown:
        raise BadInput(f"steps {unknown} are not in both backup {manifest.id} and the target")
    objects = [manifest.object(n) for n in wanted]
    for obj in objects:  # the restore scripts only ever see data that checked out whole
        verify_object(store, obj)
    restored = []
    for obj in objects:
        step = by_name[obj.name]
        feed_stdin(
            step.restore_command,
            read_object(store, obj),
            step.environment(),
            step.cwd,
            step.timeout_seconds,
            f"app-state restore {step.name}",
            redact=step.secret_values(),
        )
        restored.append(obj.name)
    return {"restored_steps": restored, "bytes": sum(o.raw_size for o in objects)}


def describe_current_state(target: AppStateTarget) -> dict[str, Any]:
    return {"steps": [{"name": s.name, "backup_command": s.backup_command[0]} for s in target.steps]}
