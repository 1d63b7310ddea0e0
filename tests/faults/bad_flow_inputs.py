"""Rows of the bad-input table (test_bad_input.BAD_INPUTS) for the parameters every flow shares
(flows/inputs.py): component lists, per-component maps, numbers, record ids, labels."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from blocks.restore_guard import MaintenanceWindow, RestoreGuard
from blocks.store import S3Store
from flows.backup import backup_all
from flows.drill import restore_drill
from flows.maintenance import enforce_retention
from flows.pitr import pitr_kubernetes, pitr_postgres
from flows.postgres import cleanup_postgres_rollbacks
from flows.recovery import restore_plan, restore_with_checklist, rollback_restore
from flows.scenarios import data_corruption, full_cluster_restore

FORGED_RP = "recovery-point-20990101T000000Z-abcdef"


def stored_with_typo(name: str) -> str:
    """A restore guard stored with a misspelt field through the API (the server keeps any data;
    Block.save would drop the field): its name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentCreate

    RestoreGuard.register_type_and_schema()
    document = BlockDocumentCreate(
        name=name,
        data={"require_aproval": True},
        block_type_id=RestoreGuard._block_type_id,
        block_schema_id=RestoreGuard._block_schema_id,
    )
    with get_client(sync_client=True) as client:
        client.create_block_document(document)
    return name


@dataclass(frozen=True)
class Bad:
    name: str
    fault: str
    call: Callable[[Any], Any]  # gets the table's world (test_bad_input.World, or Systems)
    error: str
    message: str
    task_failed: bool = False  # failed inside the backup task: Prefect records it in _prefect-results
    category: str = "bad-input"

    @property
    def outcome(self) -> str:
        extra = " (but Prefect's record of the failed task run)" if self.task_failed else ""
        return f"{self.error}: '{self.message}'; nothing changed{extra}"


FLOW_INPUTS = [
    # --- strict block fields and parameter models (blocks/strict.py) -------------------------
    Bad(
        "guard-field-typo",
        "RestoreGuard(require_aproval=True) (was: a guard that asks nobody, the typo ignored)",
        lambda w: RestoreGuard(require_aproval=True),
        "ValidationError",
        "unknown field 'require_aproval' (did you mean 'require_approval'?)",
    ),
    Bad(
        "store-field-typo",
        "S3Store(encryption_kay=...) (was: a store that writes in clear, the key ignored)",
        lambda w: S3Store(bucket=w.bucket, encryption_kay="k3y-never-shown"),
        "ValidationError",
        "unknown field 'encryption_kay' (did you mean 'encryption_key'?)",
    ),
    Bad(
        "window-field-typo",
        "MaintenanceWindow(day=[5]) (was: a window open every day)",
        lambda w: MaintenanceWindow(start="02:00", end="04:00", day=[5]),
        "ValidationError",
        "unknown field 'day' (did you mean 'days'?)",
    ),
    Bad(
        "window-day-not-a-weekday",
        "MaintenanceWindow(days=[7]) (was: a window that never opened, and an IndexError describing it)",
        lambda w: MaintenanceWindow(days=[7], start="02:00", end="04:00"),
        "ValidationError",
        "days [7] are not weekdays: use 0=Monday .. 6=Sunday",
    ),
    Bad(
        "window-no-days",
        "MaintenanceWindow(days=[]) (was: a window that never opened)",
        lambda w: MaintenanceWindow(days=[], start="02:00", end="04:00"),
        "ValidationError",
        "days=[] names no day: leave days out for every day",
    ),
    Bad(
        "window-of-no-length",
        "MaintenanceWindow(start='02:00', end='02:00') (was: a window that never opened)",
        lambda w: MaintenanceWindow(start="02:00", end="02:00"),
        "ValidationError",
        "start and end are both 02:00: the window would never open",
    ),
    Bad(
        "window-not-utc",
        "MaintenanceWindow(start='02:00+02:00') (was: a TypeError at every restore)",
        lambda w: MaintenanceWindow(start="02:00+02:00", end="04:00"),
        "ValidationError",
        "is not UTC: give the window's times in UTC",
    ),
    Bad(
        "drill-health-check-typo",
        "restore_drill(health_checks=[{..., 'expect_staus': 204}]) (was: expects 200, the typo ignored)",
        lambda w: restore_drill(
            health_checks=[{"name": "api", "url": "http://127.0.0.1:9/", "expect_staus": 204}],
            store=w.store,
            return_state=True,
        ),
        "ParameterTypeError",
        "unknown field 'expect_staus' (did you mean 'expect_status'?)",
    ),
    Bad(
        "guard-stored-with-unknown-field",
        "restore_with_checklist(guard=<a guard block stored with require_aproval>) (was: Prefect's "
        "'Unable to load ... try validate=False')",
        lambda w: restore_with_checklist(
            "app-state",
            target=w.target,
            store=w.store,
            guard=stored_with_typo(f"typo-guard-{secrets.token_hex(3)}"),
            return_state=True,
        ),
        "ConfigurationError",
        "is stored with invalid fields (RestoreGuard: unknown field 'require_aproval'",
    ),
    # --- every flow's shared parameters (flows/inputs.py) -----------------------------------
    Bad(
        "plan-empty-components",
        "restore_plan(recovery_point='latest', components=[])",
        lambda w: restore_plan(recovery_point="latest", components=[], store=w.store, return_state=True),
        "BadInput",
        "components=[] names no component",
    ),
    Bad(
        "plan-targets-typo",
        "restore_plan targets={'app-stat': ...} (a typo, was silently ignored)",
        lambda w: restore_plan(backup_id=w.id, targets={"app-stat": "x"}, store=w.store, return_state=True),
        "BadInput",
        "targets names unknown components ['app-stat']",
    ),
    Bad(
        "plan-id-of-another-component",
        "restore_plan(backup_id=<app-state id>, components=['etcd']) (components was ignored)",
        lambda w: restore_plan(backup_id=w.id, components=["etcd"], store=w.store, return_state=True),
        "BadInput",
        "backup {id} is of app-state, not of components ['etcd']",
    ),
    Bad(
        "drill-empty-components",
        "restore_drill(components=[]) (was: every component, and a drill record)",
        lambda w: restore_drill(components=[], store=w.store, return_state=True),
        "BadInput",
        "components=[] names no component",
    ),
    Bad(
        "drill-nan-rto",
        "restore_drill(rto_target_minutes=nan) (an RTO no restore could miss)",
        lambda w: restore_drill(rto_target_minutes=math.nan, store=w.store, return_state=True),
        "BadInput",
        "rto_target_minutes must be a finite number > 0, not nan",
    ),
    Bad(
        "drill-infinite-rpo-override",
        "restore_drill(rpo_targets_hours={'app-state': inf})",
        lambda w: restore_drill(rpo_targets_hours={"app-state": math.inf}, store=w.store, return_state=True),
        "BadInput",
        "rpo_targets_hours['app-state'] must be a finite number > 0, not inf",
    ),
    Bad(
        "drill-health-check-of-a-component-left-out",
        "restore_drill(components=['app-state'], health_checks=[{component: 'rabbitmq', ...}]) "
        "(was: the drill ran and was judged without it: the check never ran)",
        lambda w: restore_drill(
            components=["app-state"],
            targets={"app-state": w.target},
            health_checks=[{"name": "queues", "component": "rabbitmq", "command": ["false"]}],
            store=w.store,
            return_state=True,
        ),
        "BadInput",
        "health checks are for ['rabbitmq'], which this drill does not include (app-state)",
    ),
    Bad(
        "drill-id-too-long",
        "restore_drill(drill_id=<25 characters>) (was: accepted, the postgres drill refused it after the "
        "other components were drilled, and Kubernetes cut it so that two ids shared namespaces)",
        lambda w: restore_drill(drill_id="a" * 25, store=w.store, return_state=True),
        "BadInput",
        "use 1-24 lower-case letters and digits",
    ),
    Bad(
        "drill-targets-typo",
        "restore_drill targets={'app-stat': ...} (was: app-state 'not configured')",
        lambda w: restore_drill(targets={"app-stat": w.target}, store=w.store, return_state=True),
        "BadInput",
        "targets names unknown components ['app-stat']",
    ),
    Bad(
        "backup-all-targets-typo",
        "backup_all targets={'app-stat': ...}",
        lambda w: backup_all(
            components=["app-state"], targets={"app-stat": w.target}, store=w.store, return_state=True
        ),
        "BadInput",
        "targets names unknown components ['app-stat']",
    ),
    Bad(
        "backup-all-named-unconfigured",
        "backup_all(components=['app-state']) with no app-state target (was: RuntimeError)",
        lambda w: backup_all(components=["app-state"], store=w.store, return_state=True),
        "ComponentFailed",
        "backups failed: app-state: no app-state target",
    ),
    Bad(
        "full-restore-options-typo",
        "full_cluster_restore options={'app-stat': ...} (was silently ignored)",
        lambda w: full_cluster_restore(
            options={"app-stat": {"steps": ["x"]}}, store=w.store, return_state=True
        ),
        "BadInput",
        "options names unknown components ['app-stat']",
    ),
    Bad(
        "full-restore-invalid-options",
        "full_cluster_restore options={'app-state': {'step': [...]}} (was found only at that step)",
        lambda w: full_cluster_restore(
            options={"app-state": {"step": ["x"]}}, store=w.store, return_state=True
        ),
        "BadInput",
        "invalid restore options for app-state",
    ),
    Bad(
        "full-restore-run-id-path",
        "full_cluster_restore(run_id='../../x')",
        lambda w: full_cluster_restore(run_id="../../x", store=w.store, return_state=True),
        "BadInput",
        "'../../x' is not a full cluster restore run id (dr-<YYYYMMDDTHHMMSSZ>-<6 hex>): copy it",
    ),
    Bad(
        "full-restore-dry-run-of-an-unknown-run",
        "full_cluster_restore(run_id=<no such run>) as a dry run (was: the plan of 'latest', as if "
        "it were that run's)",
        lambda w: full_cluster_restore(run_id="dr-20260101T000000Z-abcdef", store=w.store, return_state=True),
        "NotFound",
        "no full cluster restore run dr-20260101T000000Z-abcdef to resume",
    ),
    Bad(
        "pitr-port-out-of-range",
        "pitr_postgres(port=-1) (was: pydantic's ValidationError)",
        lambda w: pitr_postgres(target_time="latest", port=-1, return_state=True),
        "BadInput",
        "invalid restore options for postgres-pitr",
    ),
    Bad(
        "pitr-kubernetes-dry-run-options-typo",
        "pitr_kubernetes(dry_run=True, options={'namespace': ...}) (was: a plan, the typo unseen)",
        lambda w: pitr_kubernetes(
            target_time=datetime.now(UTC),
            options={"namespace": ["x"]},
            dry_run=True,
            store=w.store,
            return_state=True,
        ),
        "BadInput",
        "invalid restore options for kubernetes",
    ),
    Bad(
        "data-corruption-empty-pvcs",
        "data_corruption(pvcs=[]) (was: every PVC of the namespace deleted and restored)",
        lambda w: data_corruption(namespace="shop", pvcs=[], store=w.store, return_state=True),
        "BadInput",
        "pvcs=[] names no PVC",
    ),
    Bad(
        "checklist-empty-required-object",
        "restore_with_checklist(required_objects=['']) (was: refused only after reading the backup, "
        "leaving a 'refused' restore record)",
        lambda w: restore_with_checklist(
            "app-state", target=w.target, store=w.store, required_objects=[""], return_state=True
        ),
        "BadInput",
        "required_objects: '' cannot be an object of a backup",
    ),
    Bad(
        "checklist-path-required-object",
        "restore_with_checklist(required_objects=['../x'])",
        lambda w: restore_with_checklist(
            "app-state", target=w.target, store=w.store, required_objects=["../x"], return_state=True
        ),
        "BadInput",
        "required_objects: '../x' cannot be an object of a backup",
    ),
    Bad(
        "rollback-backup-id-as-restore-id",
        "rollback_restore(restore_id=<a backup id>) (was: 'no restore', from a backup id's rules)",
        lambda w: rollback_restore(restore_id=w.id, store=w.store, return_state=True),
        "BadInput",
        "'{id}' is not a restore id (restore-<YYYYMMDDTHHMMSSZ>-<6 hex>): copy it from the restore's",
    ),
    Bad(
        "rollback-path-restore-id",
        "rollback_restore(restore_id='../../x') (was: 'malformed backup id ... klb backups list')",
        lambda w: rollback_restore(restore_id="../../x", store=w.store, return_state=True),
        "BadInput",
        "'../../x' is not a restore id",
    ),
    Bad(
        "plan-backup-id-as-recovery-point",
        "restore_plan(recovery_point=<a backup id>)",
        lambda w: restore_plan(recovery_point=w.id, store=w.store, return_state=True),
        "BadInput",
        "'{id}' is not a recovery point id (recovery-point-<YYYYMMDDTHHMMSSZ>-<6 hex>)",
    ),
    Bad(
        "backup-forged-recovery-point-label",
        "backup_component(labels={'recovery_point': ...}) (was: a lone backup retention took for "
        "the newest recovery point)",
        lambda w: w.backup(store=w.store, labels={"recovery_point": FORGED_RP}),
        "BadInput",
        "labels ['recovery_point'] are set by the system",
    ),
    Bad(
        "backup-unknown-kind-label",
        "backup_component(labels={'kind': 'bogus'}) (was: refused inside the task, its result kept)",
        lambda w: w.backup(store=w.store, labels={"kind": "bogus"}),
        "BadInput",
        "unknown backup kind 'bogus': use one of",
    ),
    Bad(
        "retention-huge-grace",
        "enforce_retention(orphan_grace_hours=1e20) (was: OverflowError)",
        lambda w: enforce_retention(orphan_grace_hours=1e20, store=w.store, return_state=True),
        "BadInput",
        "orphan_grace_hours must be at most 1e+06, not 1e+20: is it a typo?",
    ),
    Bad(
        "drill-huge-rpo-window",
        "restore_drill(rpo_window_hours=1e20) (was: OverflowError per component)",
        lambda w: restore_drill(rpo_window_hours=1e20, store=w.store, return_state=True),
        "BadInput",
        "rpo_window_hours must be at most 1e+06",
    ),
    Bad(
        "pg-cleanup-infinite-age",
        "cleanup_postgres_rollbacks(older_than_hours=inf) (was: OverflowError)",
        lambda w: cleanup_postgres_rollbacks(older_than_hours=math.inf, return_state=True),
        "BadInput",
        "older_than_hours must be a finite number >= 0, not inf",
    ),
]
