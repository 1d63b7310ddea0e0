"""Application state from custom scripts: stdout is the state; restore feeds it on stdin.

The reference component: the smallest complete implementation of the contract in
tasks/components/registry.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from blocks.app_state import AppStateStep, AppStateTarget
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions, target_from_env
from tasks.errors import BackupError, BadInput, ConfigurationError, IntegrityError, target_untouched
from tasks.models import Manifest
from tasks.proc import feed_stdin, inherited_secrets, run, stream_stdout
from tasks.storage.session import BackupSession, read_object, verify_object

Target = AppStateTarget
log = logging.getLogger(__name__)


def default_target() -> AppStateTarget:
    return target_from_env(AppStateTarget, "app-state", "KLB_APP_STATE_TARGET")  # type: ignore[return-value]


def step_env(step: AppStateStep) -> dict[str, str | None]:
    """The environment of a step's commands: its `env` and `secret_env` over the worker's, less
    every inherited variable whose name looks secret (the store's AWS keys, a password or token of
    the flow pod): a script, and all it starts, gets only the credentials its step names."""
    return {**inherited_secrets(), **step.environment()}


def backup(target: AppStateTarget, session: BackupSession) -> None:
    for step in target.steps:
        with stream_stdout(
            step.backup_command,
            step_env(step),
            step.cwd,
            step.timeout_seconds,
            f"app-state {step.name}",
            redact=step.secret_values(),
        ) as out:
            session.write(step.name, out, meta={"command": step.backup_command[0]})
    session.engine["steps"] = [s.name for s in target.steps]


def verify(target: AppStateTarget | None, manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
    return {"steps": [o.name for o in manifest.objects]}


class RestoreOptions(StrictOptions):
    steps: list[str] | None = Field(default=None, description="restore only these steps (default: all)")


def check_restore(
    target: AppStateTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> list[str]:
    """The steps to restore, in order; what the restore would refuse is refused here, before a
    checklist, safety backup or approval."""
    by_name = {s.name: s for s in target.steps}
    backed_up = [o.name for o in manifest.objects]
    wanted = options.steps or backed_up
    unknown = [n for n in wanted if n not in by_name or n not in backed_up]
    if unknown:
        raise BadInput(f"steps {unknown} are not in both backup {manifest.id} and the target")
    if len(set(wanted)) != len(wanted):
        raise BadInput(f"steps {wanted} name a step twice: name each step once (nothing was restored)")
    wanted = [n for n in backed_up if n in wanted]  # `steps` selects; the backup's order is kept
    # steps are separate scripts run one after the other: one that cannot even start (a misspelt
    # command, a missing directory) must refuse the restore before an earlier step overwrites state
    unstartable = {n: why for n in wanted if (why := _cannot_start(by_name[n]))}
    if unstartable:
        raise ConfigurationError(
            "; ".join(f"step {n!r}: {why}" for n, why in unstartable.items())
            + ": fix the target's steps; nothing was restored"
        )
    return wanted


def restore(
    target: AppStateTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    try:  # before any script runs: a rollback must find nothing to undo
        wanted = check_restore(target, manifest, store, options)
        objects = [manifest.object(n) for n in wanted]
        for obj in objects:  # the restore scripts only ever see data that checked out whole
            verify_object(store, obj)
    except BackupError as exc:
        raise target_untouched(exc) from None
    by_name = {s.name: s for s in target.steps}
    restored = []
    for i, obj in enumerate(objects):
        step = by_name[obj.name]
        try:
            feed_stdin(
                step.restore_command,
                read_object(store, obj),
                step_env(step),
                step.cwd,
                step.timeout_seconds,
                f"app-state restore {step.name}",
                redact=step.secret_values(),
                read_all=True,
            )
        except BackupError as exc:  # steps are separate scripts: say exactly where the target stands
            not_run = [o.name for o in objects[i + 1 :]]
            raise type(exc)(
                f"{exc}\nThe target is partly restored: steps {restored} were restored, step "
                f"{obj.name!r} failed, steps {not_run} did not run. Fix the failure, then restore "
                f"with options={{'steps': {[obj.name, *not_run]}}} (or all steps again)."
            ) from exc
        restored.append(obj.name)
    return {"restored_steps": restored, "bytes": sum(o.raw_size for o in objects)}


def _cannot_start(step: AppStateStep) -> str | None:
    """Why the step's restore command cannot start (as Popen would find it), or None."""
    if step.cwd and not os.path.isdir(step.cwd):
        return f"its working directory {step.cwd} does not exist"
    program = step.restore_command[0]
    if os.sep in program:  # a path: relative to the step's working directory, as Popen takes it
        path = os.path.join(step.cwd or os.getcwd(), program)
        found = os.path.isfile(path) and os.access(path, os.X_OK)
    else:  # on the PATH the command gets: the step's own, else the flow's
        found = shutil.which(program, path=step.environment().get("PATH", os.environ.get("PATH"))) is not None
    return None if found else f"restore command {program!r} is not found or not executable"


def describe_current_state(target: AppStateTarget) -> dict[str, Any]:
    return {"steps": [{"name": s.name, "backup_command": s.backup_command[0]} for s in target.steps]}


DRILL_DIR_ENV = "KLB_DRILL_DIR"


def drill_base_dir() -> str | None:
    """Where drill directories go: $KLB_DRILL_TMPDIR, else the system temp directory."""
    return os.environ.get("KLB_DRILL_TMPDIR") or None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _reap(workdir: Path) -> list[int]:
    """Kill whatever a drill command left running (found by its $KLB_DRILL_DIR): a drill leaves
    no process behind. Linux /proc; elsewhere a no-op."""
    marker = f"{DRILL_DIR_ENV}={workdir}\0".encode()
    killed = []
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
        except OSError:
            continue
    return killed


def _drill_step(step, obj, store: StoreBlock, drill_id: str) -> dict[str, Any]:
    """Restore one step into its own temp directory, verify it there, always remove it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"klb-drill-{drill_id}-{step.name}-", dir=drill_base_dir()))
    env = {**step_env(step), DRILL_DIR_ENV: str(workdir)}
    cwd = step.cwd or str(workdir)  # relative paths in drill commands land in the drill dir
    try:
        feed_stdin(  # read_object raises at the end of the stream if any byte is wrong
            step.drill_restore_command,
            read_object(store, obj),
            env,
            cwd,
            step.timeout_seconds,
            f"app-state drill restore {step.name}",
            redact=step.secret_values(),
            read_all=True,
        )
        if step.verify_command:
            run(
                step.verify_command,
                env,
                cwd,
                step.timeout_seconds,
                f"app-state verify {step.name}",
                redact=step.secret_values(),
            )
            return {"verified": True, "by": "verify_command", "dir": str(workdir)}
        files = [f for f in workdir.rglob("*") if f.is_file()]
        if len(files) != 1:
            raise IntegrityError(
                f"step {step.name}: the drill restore wrote {len(files)} files; a check without "
                "verify_command needs exactly one (a pure sink): set the step's verify_command"
            )
        if _sha256_of(files[0]) != obj.raw_sha256:
            raise IntegrityError(
                f"step {step.name}: what the drill restore wrote does not match the backup's sha256"
            )
        return {"verified": True, "by": "sha256", "bytes": obj.raw_size, "dir": str(workdir)}
    finally:
        if _reap(workdir):
            log.warning("app-state drill %s: killed processes its commands left running", step.name)
        shutil.rmtree(workdir, ignore_errors=True)


def drill(target: AppStateTarget, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict[str, Any]:
    """Restore every step that has a drill_restore_command into a temp directory, verify it,
    remove it. Steps without one are listed as not covered; none covered = not covered."""
    by_name = {s.name: s for s in target.steps}
    checks: dict[str, Any] = {}
    not_covered: dict[str, str] = {}
    for obj in manifest.objects:
        step = by_name.get(obj.name)
        if step is None:
            not_covered[obj.name] = "the target has no step of this name"
        elif not step.drill_restore_command:
            not_covered[obj.name] = "the step has no drill_restore_command"
        else:
            try:
                checks[obj.name] = _drill_step(step, obj, store, drill_id)
            except BackupError as exc:  # name the step, keep the kind of failure
                raise type(exc)(f"app-state step {obj.name}: {exc}") from exc
    if not checks:
        return {
            "verified": False,
            "covered": False,
            "reason": "; ".join(f"{n}: {r}" for n, r in not_covered.items()),
            "not_covered": not_covered,
        }
    return {"verified": True, "checks": checks, "not_covered": not_covered}


def drill_cleanup(target: AppStateTarget, drill_id: str) -> None:
    """Remove `klb-drill-<id>-*` directories (and what their commands left running)."""
    base = Path(drill_base_dir() or tempfile.gettempdir())
    for workdir in base.glob(f"klb-drill-{drill_id}-*"):
        _reap(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
