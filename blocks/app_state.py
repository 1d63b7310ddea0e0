"""Application state captured by the operator's own scripts."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from blocks.names import object_name_problem
from blocks.strict import StrictBlock, StrictModel


class AppStateStep(StrictModel):
    """One piece of state: `backup_command` writes it to stdout, `restore_command` reads stdin."""

    name: str = Field(description="object name in the backup, e.g. 'sessions'")
    backup_command: list[str] = Field(min_length=1, description="argv; no shell")
    restore_command: list[str] = Field(min_length=1, description="argv; reads the state on stdin")
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, SecretStr] = Field(default_factory=dict, description="env vars kept secret")
    cwd: str | None = None
    timeout_seconds: float = Field(default=3600, gt=0)
    drill_restore_command: list[str] | None = Field(
        default=None,
        min_length=1,
        description="argv for restore drills: reads the state on stdin and writes it only under "
        "$KLB_DRILL_DIR (a temp directory), never to production. Unset: the step is not covered",
    )
    verify_command: list[str] | None = Field(
        default=None,
        min_length=1,
        description="argv run after the drill restore with $KLB_DRILL_DIR set (also the working directory "
        "unless cwd is set); exit 0 = verified. "
        "Unset: the drill restore must be a pure sink (one file, checked against the sha256)",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if problem := object_name_problem(value):
            raise ValueError(problem)
        if value == "manifest.json":  # every backup's own manifest has this name
            raise ValueError("step name 'manifest.json' is reserved: choose another name")
        return value

    def secret_values(self) -> list[str]:
        return [v.get_secret_value() for v in self.secret_env.values()]

    def environment(self) -> dict[str, str]:
        return {**self.env, **{k: v.get_secret_value() for k, v in self.secret_env.items()}}


class AppStateTarget(StrictBlock):
    _block_type_name = "KLB App State Target"
    _block_type_slug = "klb-app-state-target"
    _description = "Custom scripts whose stdout is application state (backup) and stdin restores it."

    steps: list[AppStateStep] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _unique(cls, steps: list[AppStateStep]) -> list[AppStateStep]:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique: {names}")
        return steps
