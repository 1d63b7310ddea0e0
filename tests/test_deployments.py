"""prefect.yaml: agrees with the backup table, schedules right, entrypoints are real flows, typed forms."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from tasks.components.registry import SPECS
from tests import deployspec as spec

DEPLOYMENTS = spec.deployments()


def _project_flows() -> set[str]:
    """Every flow defined in flows/*.py (demo flows excepted): each needs a deployment."""
    import importlib

    found = set()
    for path in sorted((spec.ROOT / "flows").glob("*.py")):
        module = importlib.import_module(f"flows.{path.stem}")
        for name, obj in vars(module).items():
            if isinstance(obj, Flow) and obj.fn.__module__ == module.__name__ and not name.startswith("demo"):
                found.add(f"flows/{path.name}:{name}")
    return found


ALL_ENTRYPOINTS = _project_flows()


def _flow(entrypoint: str) -> Flow:
    path, func = entrypoint.split(":")
    return load_flow_from_entrypoint(f"{spec.ROOT / path}:{func}")


def test_files_are_what_prefect_deploy_reads(path: Path = spec.PREFECT_YAML):
    model = PrefectYamlModel.model_validate(spec.load_yaml(path))
    known = set(DeploymentConfig.model_fields)
    for raw in spec.load_yaml(path)["deployments"]:
        assert set(raw) <= known, f"{raw['name']}: keys prefect deploy ignores: {set(raw) - known}"
        assert raw["work_pool"]["name"] == "klb-kubernetes"
        assert raw.get("description"), f"{raw['name']} needs a description (shown in the UI)"
    assert len(model.deployments) == len(spec.load_yaml(path)["deployments"])


def test_deployment_names_are_unique():
    names = [d["name"] for d in DEPLOYMENTS]
    assert len(names) == len(set(names)), names


def test_every_flow_of_the_project_has_a_deployment():
    assert {d["entrypoint"] for d in DEPLOYMENTS} == ALL_ENTRYPOINTS


@pytest.mark.parametrize("entrypoint", sorted({d["entrypoint"] for d in DEPLOYMENTS}))
def test_every_entrypoint_in_prefect_yaml_imports_and_is_a_flow(entrypoint):
    assert isinstance(_flow(entrypoint), Flow)


def test_code_runs_from_the_image_directory():
    pull = spec.load_yaml()["pull"]
    assert pull == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/klb"}}]
    assert "WORKDIR /opt/klb" in (spec.ROOT / "deployments/k8s/Dockerfile").read_text()


# ---- the backup table and the schedules ---------------------------------------------------------


def test_scheduled_backups_agree_with_the_backup_table():
    assert spec.schedule_mismatches(DEPLOYMENTS, spec.table()) == []
    assert {d["parameters"]["component"] for d in spec.scheduled_backups(DEPLOYMENTS)} == set(spec.table())


def test_backup_schedules_ship_inactive_until_the_component_is_configured():
    """scripts/enable_schedules.py turns on those with a target; drill and sweeps always run."""
    for dep in spec.scheduled_backups(DEPLOYMENTS):
        assert [s["active"] for s in dep["schedules"]] == [False], dep["name"]
    others = [d for d in DEPLOYMENTS if d.get("schedules") and d not in spec.scheduled_backups(DEPLOYMENTS)]
    assert others and all(s["active"] for d in others for s in d["schedules"])


def test_every_component_of_the_registry_is_in_the_table():
    assert set(SPECS) == set(spec.table())


def _edit_table(tab: dict, component: str, **update) -> None:
    tab[component] = tab[component].model_copy(update=update)


@pytest.mark.parametrize(
    "edit, expect",
    [
        (lambda deps, tab: deps[0]["schedules"][0].update(cron="0 */4 * * *"), "cron"),
        (lambda deps, tab: _edit_table(tab, "postgres", every_hours=4), "apart"),
        (lambda deps, tab: _edit_table(tab, "etcd", cron="0 * * * *"), "cron"),
        (lambda deps, tab: deps.pop(2), "want exactly 1"),
        (lambda deps, tab: deps[1]["parameters"].update(component="postgres"), "want exactly 1"),
        (lambda deps, tab: deps[0]["schedules"][0].pop("timezone"), "UTC"),
        (lambda deps, tab: deps[0]["parameters"].update(component="mongodb"), "not in backup-table"),
    ],
    ids=[
        "cron-edited",
        "table-interval-edited",
        "table-cron-edited",
        "deployment-removed",
        "component-duplicated",
        "timezone-missing",
        "unknown-component",
    ],
)
def test_the_agreement_check_catches_an_edit_on_either_side(edit, expect):
    deps, tab = copy.deepcopy(DEPLOYMENTS), dict(spec.table())
    edit(deps, tab)
    problems = spec.schedule_mismatches(deps, tab)
    assert any(expect in p for p in problems), problems


def test_every_schedule_is_explicitly_utc():
    for dep in DEPLOYMENTS:
        for schedule in dep.get("schedules") or []:
            assert schedule.get("timezone") == "UTC", dep["name"]


def test_the_drill_runs_on_first_mondays_at_0200_utc():
    (drill,) = [d for d in DEPLOYMENTS if d["entrypoint"] == spec.DRILL_ENTRYPOINT]
    (schedule,) = drill["schedules"]
    runs = spec.next_runs(schedule, 12)
    assert len(runs) == 12 and spec.first_monday_problems(runs) == []
    assert len({(r.year, r.month) for r in runs}) == 12  # one a month, none skipped
    # the same cron with cron's default day_or=true also fires on every Monday and days 1-7
    wrong = spec.next_runs({**schedule, "day_or": True}, 12)
    assert spec.first_monday_problems(wrong)


def test_maintenance_sweeps_are_scheduled_daily():
    for entrypoint in ("flows/maintenance.py:enforce_retention", "flows/maintenance.py:verify_backups"):
        (dep,) = [d for d in DEPLOYMENTS if d["entrypoint"] == entrypoint]
        (schedule,) = dep["schedules"]
        assert spec.interval_problems(schedule, timedelta(days=1)) == []
    (retention,) = [d for d in DEPLOYMENTS if d["name"] == "enforce-retention-daily"]
    assert retention["parameters"]["dry_run"] is False  # a scheduled dry run deletes nothing, ever


def test_restores_and_scenarios_are_on_demand_only():
    for dep in DEPLOYMENTS:
        if "restore" in dep["tags"] or "scenario" in dep["tags"]:
            assert not dep.get("schedules"), dep["name"]


# ---- concurrency --------------------------------------------------------------------------------


def test_one_run_per_scheduled_deployment_at_a_time():
    for dep in DEPLOYMENTS:
        if dep.get("schedules") or "backup" in dep["tags"]:
            limit = dep["concurrency_limit"]
            assert limit["limit"] == 1, dep["name"]
            assert limit["collision_strategy"] in {"ENQUEUE", "CANCEL_NEW"}, dep["name"]


def test_component_deployments_are_tagged_with_their_component():
    for dep in spec.scheduled_backups(DEPLOYMENTS):
        assert f"component:{dep['parameters']['component']}" in dep["tags"], dep["name"]


# ---- typed parameters: the UI renders forms -----------------------------------------------------


def _schema(entrypoint: str) -> dict:
    return parameter_schema(_flow(entrypoint).fn).model_dump_for_openapi()


def _resolve(schema: dict, prop: dict) -> dict:
    for option in prop.get("anyOf", [prop]):
        if "$ref" in option:
            return schema["definitions"][option["$ref"].rsplit("/", 1)[1]]
        if option.get("items", {}).get("$ref"):
            return schema["definitions"][option["items"]["$ref"].rsplit("/", 1)[1]]
    return prop


def test_backup_form_offers_the_components_as_a_choice():
    schema = _schema("flows/backup.py:backup_component")
    assert schema["required"] == ["component"]
    assert set(_resolve(schema, schema["properties"]["component"])["enum"]) == set(SPECS)


def test_restore_form_has_component_choice_and_backup_id():
    schema = _schema("flows/restore.py:restore_component")
    props = schema["properties"]
    assert set(_resolve(schema, props["component"])["enum"]) == set(SPECS)
    assert props["backup_id"]["default"] == "latest" and props["backup_id"]["type"] == "string"


def test_pitr_form_asks_for_a_datetime():
    schema = _schema("flows/pitr.py:pitr_postgres")
    assert '"format": "date-time"' in json.dumps(schema), "the target time renders as a date-time picker"
    assert schema["required"], "a PITR without a target cannot be started by mistake"


def test_sweep_forms():
    verify = _schema("flows/maintenance.py:verify_backups")
    assert set(_resolve(verify, verify["properties"]["components"])["enum"]) == set(SPECS)
    assert verify["properties"]["newest"]["type"] == "integer"
    retention = _schema("flows/maintenance.py:enforce_retention")
    assert retention["properties"]["dry_run"] == {**retention["properties"]["dry_run"], "type": "boolean"}
    assert retention["properties"]["dry_run"]["default"] is True


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_parameters_fit_the_flow_form(dep):
    """What the server enforces (enforce_parameter_schema) holds for the parameters in prefect.yaml."""
    schema = _schema(dep["entrypoint"])
    if not dep.get("schedules"):  # on demand: the person running it fills in the required fields
        schema = {**schema, "required": []}
    jsonschema.validate(dep.get("parameters") or {}, schema)
    if dep["entrypoint"] == spec.BACKUP_ENTRYPOINT:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"component": "mongodb"}, schema)


def test_monthly_drill_rpo_targets_are_reachable_by_the_backup_schedule():
    """A component backed up every N hours cannot show a worst gap under N hours: a drill whose
    RPO target is at or below the schedule's interval fails by construction."""
    from tasks.table import backup_table

    drill = next(d for d in DEPLOYMENTS if d["name"] == "restore-drill-monthly")
    params = drill["parameters"]
    for component, policy in backup_table().items():
        target = params.get("rpo_targets_hours", {}).get(component, params["rpo_target_hours"])
        assert target > policy.every_hours, (
            f"{component} is backed up every {policy.every_hours} h but the drill wants RPO < {target} h"
        )
