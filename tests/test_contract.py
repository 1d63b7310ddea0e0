"""The component contract, checked for every registered component (as wal-g checks every storage
backend and Prefect every block): verbs and signatures, strict restore options, the target block
the registry names, and errors of the project's own type for a wrong target."""

from __future__ import annotations

import types

import pytest
from pydantic import BaseModel, ValidationError

from blocks.monitoring import PushgatewayConfig
from blocks.rabbitmq import RabbitMQTarget
from tasks.components.contract import StrictOptions, check_contract
from tasks.components.registry import SPECS, load, load_target, spec
from tasks.errors import BadInput, ConfigurationError

COMPONENTS = sorted(SPECS)


def assert_conforms(module: types.ModuleType, target_block: str | None) -> None:
    problems = check_contract(module, target_block)
    assert not problems, "the component breaks its contract:\n" + "\n".join(problems)


@pytest.mark.parametrize("component", COMPONENTS)
def test_contract_every_verb_with_its_signature(component):
    assert_conforms(load(component), spec(component).target_block)


@pytest.mark.parametrize("component", COMPONENTS)
def test_contract_restore_options_forbid_unknown_fields(component):
    options = load(component).RestoreOptions
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        options.model_validate({"no_such_option": 1})


@pytest.mark.parametrize("component", COMPONENTS)
def test_contract_wrong_target_block_name_is_a_configuration_error(component, prefect_server):
    with pytest.raises(ConfigurationError, match="no .* target block named 'klb-no-such-block'"):
        load_target(component, "klb-no-such-block")
    with pytest.raises(ConfigurationError):
        load_target(component, "klb-no-such-type/klb-no-such-block")


@pytest.mark.parametrize("component", COMPONENTS)
def test_contract_target_block_of_another_type_is_a_configuration_error(component):
    other = PushgatewayConfig(url="http://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match=spec(component).target_block):
        load_target(component, other)
    with pytest.raises(BadInput):
        load_target(component, 42)  # type: ignore[arg-type]


@pytest.mark.parametrize("component", COMPONENTS)
def test_contract_registry_row_is_complete(component):
    row = spec(component)
    assert row.lock_group in SPECS, f"{component}: lock group {row.lock_group!r} is not a component"
    assert row.kinds, f"{component}: makes no kind of backup"
    assert load(component).Target.get_block_type_slug() == row.target_block


def _fake_component() -> types.ModuleType:
    """A component someone forgot to finish: no drill_cleanup, a restore with the wrong
    parameters, options that ignore typos, and a target that is not a block."""
    fake = types.ModuleType("tasks.components.fake")

    class RestoreOptions(BaseModel):
        steps: list[str] | None = None

    fake.Target = dict
    fake.RestoreOptions = RestoreOptions
    fake.default_target = lambda: {}
    fake.backup = lambda target, session: None
    fake.verify = lambda target, manifest, store: {}
    fake.restore = lambda target, manifest, store: {}
    fake.describe_current_state = lambda target: {}
    fake.drill = lambda target, manifest, store, drill_id: {}
    return fake


def test_contract_fails_for_an_incomplete_component():
    with pytest.raises(AssertionError) as caught:
        assert_conforms(_fake_component(), "klb-fake-target")
    message = str(caught.value)
    assert "missing `drill_cleanup`" in message
    assert "tasks.components.fake.restore: parameters ['target', 'manifest', 'store']" in message
    assert "RestoreOptions: must forbid unknown fields" in message
    assert "`Target` must be the component's target Block class" in message


def test_contract_fake_fixed_passes():
    fake = _fake_component()

    class RestoreOptions(StrictOptions):
        steps: list[str] | None = None

    fake.RestoreOptions = RestoreOptions
    fake.Target = RabbitMQTarget
    fake.restore = lambda target, manifest, store, options: {}
    fake.drill_cleanup = lambda target, drill_id: None
    assert_conforms(fake, "klb-rabbitmq-target")


def test_contract_covers_every_component_of_the_backup_table():
    """The contract runs over the registry: a component of the backup table without a row (or a
    row without a table entry) would never be checked."""
    from tasks.table import backup_table

    assert set(SPECS) == set(backup_table())
