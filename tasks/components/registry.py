"""The registry: one row per component, holding every rule about it that is not code.

A component is a module under tasks/components/ that satisfies the contract
(tasks/components/contract.py). Its row says which block configures it, which lock it shares, where
it stands in a full-cluster restore, and which kinds of backup it makes. Adding a component is one
module plus one row here; tests/test_contract.py checks both.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import StrEnum
from types import ModuleType

from prefect.blocks.core import Block

from tasks.errors import BadInput, ConfigurationError
from tasks.named_blocks import load_named


class BackupKind(StrEnum):
    """Why a backup was taken; stored in its manifest's labels under `kind`."""

    scheduled = "scheduled"  # a deployment's schedule
    on_demand = "on-demand"  # a person or script asked for it
    safety = "safety"  # the current state, taken before a restore replaces it
    forensic = "forensic"  # the broken state, taken before a DR scenario repairs it


ROUTINE_KINDS = frozenset({BackupKind.scheduled, BackupKind.on_demand})
EVERY_KIND = frozenset(BackupKind)


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # as in backup-table.yaml
    module: str  # the package or module under tasks/components/
    target_block: str  # the block type slug of its target
    lock_group: str  # components of one system share one lock: one change at a time
    dr_step: str | None  # its step in a full-cluster restore, in row order; None: not part of it
    plan_only: bool = False  # a restore is written out as a reviewed plan, run by hand
    velero_owned: bool = False  # Velero holds the data: its Backup CR expires with the manifest
    # its backups start windows of continuous recovery (base backup + WAL): retention also keeps
    # the newest one before the window, or recovery would not reach back the whole retention
    recovery_window: bool = False
    kinds: frozenset[BackupKind] = EVERY_KIND - {BackupKind.forensic}


# Row order is the restore order of a full-cluster restore: resources before the volumes that
# bind to them, data before the services that read it.
SPECS: dict[str, ComponentSpec] = {
    spec.name: spec
    for spec in (
        ComponentSpec(
            "kubernetes",
            "tasks.components.kubernetes",
            "klb-velero-target",
            lock_group="kubernetes",
            dr_step="namespaces-and-crds",
            velero_owned=True,
            kinds=EVERY_KIND,
        ),
        # one lock with kubernetes: what a restore or DR scenario of either does to the cluster
        # (apps scaled to 0, claims or namespaces deleted, claims restored empty) is what the
        # other's backup would capture and make `latest` (flows/locks.py says why one, not two)
        ComponentSpec(
            "volumes",
            "tasks.components.volumes",
            "klb-velero-target",
            lock_group="kubernetes",
            dr_step="volumes",
            velero_owned=True,
            kinds=EVERY_KIND,
        ),
        ComponentSpec(
            "postgres", "tasks.components.postgres", "klb-postgres-target", "postgres", dr_step="databases"
        ),
        ComponentSpec(
            "etcd", "tasks.components.etcd", "klb-etcd-target", "etcd", dr_step="etcd-plan", plan_only=True
        ),
        ComponentSpec(
            "rabbitmq", "tasks.components.rabbitmq", "klb-rabbitmq-target", "rabbitmq", dr_step="rabbitmq"
        ),
        ComponentSpec(
            "app-state",
            "tasks.components.app_state",
            "klb-app-state-target",
            "app-state",
            dr_step="app-state",
        ),
        # one PostgreSQL server: a base backup must not run while a dump restore replaces it
        ComponentSpec(
            "postgres-pitr",
            "tasks.components.postgres_pitr",
            "klb-pitr-target",
            "postgres",
            dr_step=None,
            recovery_window=True,
        ),
    )
}

ComponentName = StrEnum("ComponentName", {n.replace("-", "_"): n for n in SPECS})
ComponentName.__doc__ = "A component of the backup table."


def spec(component: str) -> ComponentSpec:
    found = SPECS.get(str(component))
    if found is None:
        raise BadInput(f"unknown component {component!r}: choose one of {', '.join(SPECS)}")
    return found


def load(component: str) -> ModuleType:
    return importlib.import_module(spec(component).module)


def dr_order() -> list[str]:
    """Every component in restore order: the full-cluster steps first, then the rest."""
    return [s.name for s in SPECS.values() if s.dr_step] + [s.name for s in SPECS.values() if not s.dr_step]


def load_target(component: str, ref: str | Block | None) -> Block:
    """A target block: given, loaded by name ('type-slug/name' or a name of the component's
    target type), or the component's default from the environment."""
    module = load(component)
    if ref is None or ref == "":
        return module.default_target()
    if isinstance(ref, Block):
        block = ref
    elif not isinstance(ref, str):
        raise BadInput(f"target for {component} must be a block name or a {module.Target.__name__} block")
    else:
        block = load_named(Block if "/" in ref else module.Target, ref)
        if block is None:
            raise ConfigurationError(
                f"no {component} target block named {ref!r}: create a {spec(component).target_block!r} "
                "block with that name (docs/deployments.md, scripts/create_blocks.py)"
            )
    # exact block type: a PitrTarget is a PostgresTarget in Python, but not a postgres target
    if (
        not isinstance(block, module.Target)
        or block.get_block_type_slug() != module.Target.get_block_type_slug()
    ):
        raise ConfigurationError(
            f"target {ref!r} is a {type(block).__name__} block; {component} needs a "
            f"{spec(component).target_block!r} block ({module.Target.__name__})"
        )
    return block


__all__ = [
    "SPECS",
    "BackupKind",
    "ComponentName",
    "ComponentSpec",
    "dr_order",
    "load",
    "load_target",
    "spec",
]
