"""The run forms of every deployed flow: the schema Prefect builds from the flow's signature and
docstring (what the UI renders) describes every parameter, and never shows Prefect's Block base
class (whose docstring and `_block_document_name` field mean nothing to the person filling it in).
Python callers can still pass block objects."""

from __future__ import annotations

import importlib
import json

import pytest
from prefect.utilities.callables import parameter_schema

from tests import deployspec as spec

ENTRYPOINTS = sorted({d["entrypoint"] for d in spec.deployments()})


def flow_of(entrypoint: str):
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_every_parameter_of_every_deployed_flow_has_a_description(entrypoint):
    schema = parameter_schema(flow_of(entrypoint).fn).model_dump()
    undescribed = [
        p for p, prop in schema["properties"].items() if not (prop.get("description") or "").strip()
    ]
    assert undescribed == [], f"{entrypoint}: add these to the docstring's Args: {undescribed}"


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_no_form_shows_the_block_base_class(entrypoint):
    text = json.dumps(parameter_schema(flow_of(entrypoint).fn).model_dump())
    assert "A base class for implementing a block" not in text
    assert "_block_document_name" not in text


def test_backup_id_explains_latest_and_the_id_format():
    schema = parameter_schema(flow_of("flows/restore.py:restore_component").fn).model_dump()
    text = schema["properties"]["backup_id"]["description"]
    assert "'latest'" in text and "<component>-<YYYYMMDDTHHMMSSZ>-<6 hex>" in text


def test_python_callers_still_pass_block_objects(prefect_server, local_store, tmp_path):
    """A target and a store given as objects, not names, go through the flow's validation."""
    from blocks.app_state import AppStateStep, AppStateTarget
    from flows.backup import backup_component

    state = tmp_path / "state.json"
    state.write_text('{"a": 1}')
    step = AppStateStep(name="state", backup_command=["cat", str(state)], restore_command=["true"])
    target = AppStateTarget(steps=[step])
    result = backup_component("app-state", target=target, store=local_store())
    assert result.verified
