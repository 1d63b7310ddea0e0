"""The component contract: what every module under tasks/components/ provides.

A component is a module (or package) whose top level satisfies `Component`. The flows never reach
past it: they back up, verify, restore, describe and drill through these verbs only, and every rule
about the component that is not code (its lock, its place in a full-cluster restore, which kinds
of backup it makes) is a row of the registry (tasks/components/registry.py).

`check_contract` is the conformance check, in the spirit of wal-g's storage test and Prefect's
block standards: tests/test_contract.py runs it over every registered component.
"""

from __future__ import annotations

import inspect
import os
from datetime import datetime
from types import ModuleType
from typing import Any, ClassVar, Protocol, runtime_checkable

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticUndefined

from blocks.store import StoreBlock
from tasks.errors import ConfigurationError
from tasks.models import Manifest
from tasks.named_blocks import load_named
from tasks.storage.session import BackupSession


class StrictOptions(BaseModel):
    """Base of every component's RestoreOptions: a misspelt option is an error, never ignored
    (a typo such as `step` for `steps` must not restore everything). And an empty selection
    (`steps=[]`, `databases=[]`, `vhost=""`) is an error, never "all": a field given as an empty
    list, set or string whose default is something else selects nothing."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _no_empty_selection(self) -> StrictOptions:
        for name in self.model_fields_set:
            value = getattr(self, name)
            if not isinstance(value, (list, tuple, set, frozenset, str)) or len(value) > 0:
                continue
            field = type(self).model_fields[name]
            default = field.get_default(call_default_factory=True)
            if default is PydanticUndefined or default != value:
                raise ValueError(
                    f"{name}={value!r} selects nothing: leave {name} out to restore everything, "
                    f"or name what to restore"
                )
        return self


@runtime_checkable
class Component(Protocol):
    """The verbs of a component, as module-level names."""

    Target: ClassVar[type[Block]]
    RestoreOptions: ClassVar[type[StrictOptions]]

    def default_target(self) -> Block:
        """The target from the environment, or ConfigurationError saying what to create."""
        ...

    def backup(self, target: Any, session: BackupSession) -> None:
        """Stream the component's state into `session`; set its engine facts and fingerprint."""
        ...

    def verify(self, target: Any, manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
        """The component's own check of a stored backup (object checksums are done already)."""
        ...

    def restore(self, target: Any, manifest: Manifest, store: StoreBlock, options: Any) -> dict[str, Any]:
        """Restore aside, verify, cut over; a report. The target is unchanged on failure."""
        ...

    def describe_current_state(self, target: Any) -> dict[str, Any]:
        """What the target holds now (for the pre-restore checklist and plans)."""
        ...

    def drill(self, target: Any, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict[str, Any]:
        """Restore into isolation named after `drill_id`, verify, clean up; production untouched."""
        ...

    def drill_cleanup(self, target: Any, drill_id: str) -> None:
        """Remove anything named after `drill_id` that a crashed drill left (idempotent)."""
        ...


class EngineExpiry(Protocol):
    """The extra verb of a component whose engine expires backups on its own (Velero's TTL;
    registry: velero_owned): retention calls it for the backups it keeps past their window."""

    def keep_until(self, target: Any, manifests: list[Manifest], until: datetime) -> dict[str, str]:
        """Make the engine keep these backups at least until `until`; -> backup id: what was done."""
        ...


def target_from_env(block_cls: type[Block], what: str, *env_vars: str, hint: str = "") -> Block:
    """A component's default target: the block named by the first of `env_vars` that is set,
    else ConfigurationError saying what to create."""
    slug = block_cls.get_block_type_slug()
    ref = next((os.environ[v] for v in env_vars if os.environ.get(v)), None)
    if ref:
        block = load_named(block_cls, ref)
        if block is None:
            raise ConfigurationError(
                f"no {what} target block named {ref!r} (from ${env_vars[0]}): create a {slug!r} block "
                "with that name, or unset the variable" + (f". {hint}" if hint else "")
            )
        return block
    also = f" (or {', '.join(env_vars[1:])})" if len(env_vars) > 1 else ""
    raise ConfigurationError(
        f"no {what} target: create a {slug!r} block and pass its name, or set {env_vars[0]}{also}"
        + (f". {hint}" if hint else "")
    )


VERBS = ("default_target", "backup", "verify", "restore", "describe_current_state", "drill", "drill_cleanup")


def _params(fn: Any) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _required_extras(fn: Any, contract_params: list[str]) -> list[str]:
    """Parameters beyond the contract's that a caller of the contract could not leave out."""
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.name not in contract_params
        and p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def check_contract(
    module: ModuleType, target_block: str | None = None, engine_expiry: bool = False
) -> list[str]:
    """Every way `module` falls short of `Component` (and of `EngineExpiry` when its engine
    expires backups itself), as sentences that say what to add; [] if none."""
    name = module.__name__
    problems: list[str] = []
    verbs = [(v, Component) for v in VERBS] + ([("keep_until", EngineExpiry)] if engine_expiry else [])
    for verb, protocol in verbs:
        fn = getattr(module, verb, None)
        if not callable(fn):
            problems.append(
                f"{name}: missing `{verb}` (see tasks/components/contract.py:{protocol.__name__})"
            )
            continue
        want = _params(getattr(protocol, verb))
        got = _params(fn)
        # the contract's parameters first, in its order; anything more must be optional
        if got[: len(want)] != want or _required_extras(fn, want):
            problems.append(f"{name}.{verb}: parameters {got}, the contract says {want}")
    target = getattr(module, "Target", None)
    if not (isinstance(target, type) and issubclass(target, Block)):
        problems.append(f"{name}: `Target` must be the component's target Block class")
    elif target_block and target.get_block_type_slug() != target_block:
        problems.append(
            f"{name}: Target is block type {target.get_block_type_slug()!r}, "
            f"the registry says {target_block!r}"
        )
    options = getattr(module, "RestoreOptions", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        problems.append(f"{name}: `RestoreOptions` must be a pydantic model (subclass StrictOptions)")
    elif options.model_config.get("extra") != "forbid":
        problems.append(f"{name}.RestoreOptions: must forbid unknown fields (subclass StrictOptions)")
    return problems
