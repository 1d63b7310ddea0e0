"""The component contract, checked for every registered component (as wal-g checks every storage
backend and Prefect every block): verbs and signatures, strict restore options, the target block
the registry names, and errors of the project's own type for a wrong target."""

from __future__ import annotations

import types

import pytest
from pydantic import BaseModel, ValidationError

from blocks.etcd import EtcdTarget
from blocks.monitoring import PushgatewayConfig
from blocks.pitr import PitrTarget
from blocks.rabbitmq import RabbitMQTarget
from tasks.components.contract import StrictOptions, check_contract
from tasks.components.registry import SPECS, load, load_target, spec
from tasks.errors import BadInput, ConfigurationError

COMPONENTS = sorted(SPECS)


def assert_conforms(module: types.ModuleType, target_block: str | None, engine_expiry: bool = False) -> None:
    problems = check_contract(module, target_block, engine_expiry)
    assert not problems, "the component breaks its contract:\n" + "\n".join(problems)


@pytest.mark.parametrize("component", COMPONENTS)
def test_contract_every_verb_with_its_signature(component):
    assert_conforms(load(component), spec(component).target_block, spec(component).velero_owned)


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


def _project_models() -> list[type[BaseModel]]:
    """Every block type of the blocks package, and every model of ours a flow parameter can
    carry (steps, windows, health checks), found by walking the flows' signatures."""
    import importlib
    import pkgutil
    import typing

    from prefect import Flow

    import flows
    from scripts.create_blocks import project_block_types

    found: dict[str, type[BaseModel]] = {}

    def walk(annotation: object) -> None:
        for arg in typing.get_args(annotation):
            walk(arg)
        ours = isinstance(annotation, type) and annotation.__module__.split(".")[0] in ("blocks", "tasks")
        if ours and issubclass(annotation, BaseModel) and annotation.__name__ not in found:
            found[annotation.__name__] = annotation
            for field in annotation.model_fields.values():
                walk(field.annotation)

    for block_type in project_block_types():
        walk(block_type)
    for info in pkgutil.walk_packages(flows.__path__, "flows."):
        if info.name.endswith("__main__"):
            continue
        for obj in vars(importlib.import_module(info.name)).values():
            if isinstance(obj, Flow):
                for name, annotation in typing.get_type_hints(obj.fn).items():
                    if name != "return":
                        walk(annotation)
    return [found[k] for k in sorted(found)]


MODELS = _project_models()


def test_the_strict_field_check_sees_the_models_flows_take():
    names = {m.__name__ for m in MODELS}
    expected = {"RestoreGuard", "S3Store", "PitrTarget", "MaintenanceWindow", "HealthCheck", "AppStateStep"}
    assert expected <= names


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_block_and_parameter_model_refuses_an_unknown_field(model):
    """A misspelt field is an error that names it, never ignored (Prefect's Block allows extras,
    pydantic ignores them by default); a secret given under a misspelt name is not echoed."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate({"no_such_field": "s3cr3t-never-shown"})
    assert f"{model.__name__}: unknown field 'no_such_field'" in str(caught.value)
    assert "s3cr3t-never-shown" not in str(caught.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda url: RabbitMQTarget(url=url),
        lambda url: PushgatewayConfig(url=url),
        lambda url: EtcdTarget(endpoints=[url]),
        lambda url: EtcdTarget(peer_url=url),
        lambda url: PitrTarget(archive_url="s3://bucket/pitr", endpoint_url=url),
    ],
    ids=["RabbitMQTarget", "PushgatewayConfig", "EtcdTarget.endpoints", "EtcdTarget.peer_url", "PitrTarget"],
)
def test_a_url_with_a_password_in_it_is_refused_without_echoing_it(make):
    """A URL field is plain text (the UI, the block document, every message that names the
    server): `http://admin:pw@host` was taken, and its password went wherever the URL went. It is
    refused, pointing at the username and password fields, and the password is not echoed."""
    with pytest.raises(ValidationError) as caught:
        make("http://admin:s3cr3t-in-the-url@rabbit.example:15672")
    assert "username and password fields" in str(caught.value)
    assert "s3cr3t-in-the-url" not in str(caught.value)
    make("https://rabbit.example:15672")  # and one without is taken


def test_etcd_default_target_missing_tells_a_managed_cluster_not_to_configure_one(
    prefect_server, monkeypatch
):
    """The shipped klb-config names KLB_ETCD_TARGET; on EKS/GKE/AKS nobody creates that block, and
    the error must say why there is none to create (Velero covers ConfigMaps and Secrets)."""
    monkeypatch.setenv("KLB_ETCD_TARGET", "klb-no-such-block")
    with pytest.raises(ConfigurationError, match=r"named 'klb-no-such-block'.*managed Kubernetes"):
        load("etcd").default_target()
