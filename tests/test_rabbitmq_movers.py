"""A restore into another broker than the one backed up (staging, a test broker) imports no
shovel, federation upstream or federation policy key unless told to: there they consume the
backed-up broker's queues and move its messages out. Against the machine's real RabbitMQ (3.10,
without the shovel and federation plugins), the backup taken from a stand-in source broker
(tests/rabbitmq_helpers.serve), with its own internal_cluster_id: another broker; serving the
real broker's id, it stands for the real broker itself (the same broker)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from blocks.rabbitmq import RabbitMQTarget
from tasks.errors import BadInput
from tasks.verbs import backup_task, restore_task
from tests.rabbitmq_helpers import seg, serve

LEFT_OUT = {"shovel 'move'", "federation-upstream 'prod'", "policy 'federate'", "policy 'federate-ttl'"}


@pytest.fixture
def name(api) -> Iterator[str]:
    """The source broker's vhost, deleted from the real broker afterwards."""
    vhost = "klb-prod-" + secrets.token_hex(4)
    yield vhost
    api.delete(f"/vhosts/{seg(vhost)}")


def docs(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(broker export, vhost export) of a production broker whose vhost `name` has two shovels'
    worth of movers: a shovel, a federation upstream and two federation policies."""
    vhost_doc = {
        "rabbit_version": "3.10.8",
        "parameters": [
            {"component": "shovel", "name": "move", "value": {"src-uri": "amqp://", "src-queue": "orders",
                                                               "dest-uri": "amqp://", "dest-queue": "b"}},
            {"component": "federation-upstream", "name": "prod", "value": {"uri": "amqp://"}},
            {"component": "vhost-limits", "name": "limits", "value": {"max-connections": 7}},
        ],
        "policies": [
            {"name": "federate", "pattern": "^orders$", "apply-to": "queues", "priority": 0,
             "definition": {"federation-upstream-set": "all"}},
            {"name": "federate-ttl", "pattern": "^audit", "apply-to": "queues", "priority": 1,
             "definition": {"federation-upstream": "prod", "message-ttl": 1000}},
            {"name": "plain", "pattern": "^lost$", "apply-to": "queues", "priority": 2,
             "definition": {"max-length": 10}},
        ],
        "queues": [{"name": n, "durable": True, "auto_delete": False, "arguments": {}}
                   for n in ("orders", "audit", "lost")],
        "exchanges": [],
        "bindings": [],
    }  # fmt: skip
    broker_doc = {
        "users": [],
        "vhosts": [{"name": name}],
        "permissions": [],
        "global_parameters": [{"name": "internal_cluster_id", "value": "rabbitmq-cluster-id-production"}],
        **{k: [{**i, "vhost": name} for i in v] for k, v in vhost_doc.items() if isinstance(v, list)},
    }
    return broker_doc, vhost_doc


def backup_of(name: str, store, scope: str, cluster_id: str | None):
    broker_doc, vhost_doc = docs(name)
    with serve(name, broker_doc, vhost_doc, cluster_id) as url:
        return backup_task.fn(
            "rabbitmq", RabbitMQTarget(url=url, vhosts=[name] if scope == "vhost" else None), store
        )


def real_id(api: httpx.Client) -> str:
    return api.get("/global-parameters/internal_cluster_id").json()["value"]


def assert_no_movers(api: httpx.Client, name: str) -> None:
    live = api.get(f"/definitions/{seg(name)}").json()
    assert [(p["component"], p["name"]) for p in live["parameters"]] == [("vhost-limits", "limits")]
    assert {p["name"]: p["definition"] for p in live["policies"]} == {
        "federate-ttl": {"message-ttl": 1000},
        "plain": {"max-length": 10},
    }
    assert {q["name"] for q in live["queues"]} == {"orders", "audit", "lost"}


@pytest.mark.parametrize(
    "scope,one_vhost,cluster_id",
    [
        ("vhost", False, "rabbitmq-cluster-id-production"),
        ("vhost", False, None),  # a backup that does not say which broker it came from
        ("broker", True, "rabbitmq-cluster-id-production"),
    ],
)
def test_a_restore_into_another_broker_leaves_shovels_and_federation_out(
    api, rabbitmq, name, local_store, scope, one_vhost, cluster_id
):
    """Production's backup restored in place (its vhost) into another broker imported its shovel,
    federation upstream and federation policies, so that broker would consume production's
    queues. (Here, a broker without those plugins, the restore was refused outright.) Now they
    are left out, named with their vhost, and the report says so with the option to import them."""
    store = local_store()
    manifest = backup_of(name, store, scope, cluster_id)
    opts = {"vhost": name} if one_vhost else {}
    report = restore_task.fn(manifest, RabbitMQTarget(url=rabbitmq.extra["url"]), store, opts)
    assert set(report["not_imported"]) == {f"{k} in vhost {name!r}" for k in LEFT_OUT}
    assert "import_message_movers: true" in report["not_imported"][f"shovel 'move' in vhost {name!r}"]
    assert "LEFT OUT" in report["warning"] and "import_message_movers" in report["warning"]
    assert_no_movers(api, name)


@pytest.mark.broker_wide  # a whole-broker restore (of a broker holding only that vhost)
def test_a_whole_broker_restore_into_another_broker_leaves_them_out_and_keeps_its_id(
    api, rabbitmq, name, local_store
):
    """The whole-broker import posts the backup's document as it is: its shovels and federation
    went in with it, and so did production's internal_cluster_id."""
    store = local_store()
    manifest = backup_of(name, store, "broker", "rabbitmq-cluster-id-production")
    own = real_id(api)
    report = restore_task.fn(manifest, RabbitMQTarget(url=rabbitmq.extra["url"]), store, {})
    assert report["broker_wide"] is True
    assert set(report["not_imported"]) == {f"{k} in vhost {name!r}" for k in LEFT_OUT}
    assert_no_movers(api, name)
    assert real_id(api) == own


@pytest.mark.broker_wide  # a whole-broker restore (of a broker holding only that vhost)
def test_production_s_replacement_keeps_its_own_cluster_id(api, rabbitmq, name, local_store):
    """import_message_movers: true (this broker replaces production) posted the backup's document
    with production's internal_cluster_id, and RabbitMQ's import set it: this broker took the
    lost broker's identity, and the check after the import skips that parameter, so nothing
    said so. The id names the broker itself: a restore never sets it."""
    broker_doc, vhost_doc = docs(name)
    for doc in (broker_doc, vhost_doc):  # no shovel or federation: this broker runs neither plugin
        doc["parameters"] = [p for p in doc["parameters"] if p["component"] == "vhost-limits"]
        doc["policies"] = [p for p in doc["policies"] if p["name"] == "plain"]
    store = local_store()
    with serve(name, broker_doc, vhost_doc, "rabbitmq-cluster-id-production") as url:
        manifest = backup_task.fn("rabbitmq", RabbitMQTarget(url=url), store)
    own = real_id(api)
    try:
        target = RabbitMQTarget(url=rabbitmq.extra["url"])
        report = restore_task.fn(manifest, target, store, {"import_message_movers": True})
        assert report["broker_wide"] is True
        assert {q["name"] for q in api.get(f"/queues/{seg(name)}").json()} == {"orders", "audit", "lost"}
        assert real_id(api) == own
    finally:  # the machine's broker keeps its id whatever happened
        api.put("/global-parameters/internal_cluster_id", json={"value": own})


def test_into_the_broker_backed_up_they_are_imported_as_before(api, rabbitmq, name, local_store):
    """A backup whose recorded broker is the target (the stand-in serves the real broker's id)
    imports them: on this broker, without the plugins, the restore is refused before anything,
    as it was. With import_message_movers: false they are left out, and it goes ahead."""
    store = local_store()
    manifest = backup_of(name, store, "vhost", real_id(api))
    target = RabbitMQTarget(url=rabbitmq.extra["url"])
    with pytest.raises(BadInput, match="needs plugin rabbitmq_shovel"):
        restore_task.fn(manifest, target, store, {})
    assert name not in [v["name"] for v in api.get("/vhosts").json()], "nothing changed"
    report = restore_task.fn(manifest, target, store, {"import_message_movers": False})
    assert set(report["not_imported"]) == {f"{k} in vhost {name!r}" for k in LEFT_OUT}
    assert_no_movers(api, name)


def test_production_s_replacement_imports_them_when_told(api, rabbitmq, name, local_store):
    """import_message_movers: true imports them into another broker (production's replacement):
    here the missing plugins refuse it before anything changes, which shows they were asked for.
    With into_vhost it is refused: a copy never gets them."""
    store = local_store()
    manifest = backup_of(name, store, "vhost", "rabbitmq-cluster-id-production")
    target = RabbitMQTarget(url=rabbitmq.extra["url"])
    with pytest.raises(BadInput, match="needs plugin rabbitmq_federation"):
        restore_task.fn(manifest, target, store, {"import_message_movers": True})
    with pytest.raises(BadInput, match="a copy next to production never gets"):
        restore_task.fn(
            manifest, target, store, {"vhost": name, "into_vhost": name + "-c", "import_message_movers": True}
        )
    assert not {name, name + "-c"} & {v["name"] for v in api.get("/vhosts").json()}, "nothing changed"
    with pytest.raises(Exception, match="import_message_movers"):
        restore_task.fn(manifest, target, store, {"import_message_movers": "yes please"})


def test_a_restore_that_only_leaves_movers_out_writes_nothing_and_says_so(api, rabbitmq, name, local_store):
    """Restored a second time into another broker, everything else is there already: `nothing
    restored`, and the note points at what was left out."""
    store = local_store()
    manifest = backup_of(name, store, "vhost", "rabbitmq-cluster-id-production")
    target = RabbitMQTarget(url=rabbitmq.extra["url"])
    restore_task.fn(manifest, target, store, {})
    again = restore_task.fn(manifest, target, store, {})
    assert again["created"] == [] and again["overwritten"] == []
    assert "not_imported" in again["note"] and len(again["not_imported"]) == 4


def test_a_difference_found_after_import_never_quotes_a_uri_s_password(api, rabbitmq, name):
    """A shovel's or federation upstream's value holds `amqp://user:password@host`; a restore
    that found it different after the import failed quoting both values, the passwords with
    them, in the error (and so the log, the run's state, the restore record). Now the messages
    name what differs with the passwords of URIs hidden. Shown with a global parameter (this
    broker has no shovel plugin) and a kind of definition this code does not know, which go
    through the same comparison."""
    from tasks.components.rabbitmq.definitions import restored_differences

    live_pw, backup_pw, other_pw = (secrets.token_hex(12) for _ in range(3))
    param = f"klb-uri-{name}"
    uri = "amqps://mover:{}@prod.example:5671/%2F"
    assert api.put(
        f"/global-parameters/{param}", json={"value": {"uri": uri.format(live_pw)}}
    ).status_code in (
        201,
        204,
    )
    try:
        broker_doc = {
            "global_parameters": [{"name": param, "value": {"uri": uri.format(backup_pw)}}],
            "shovels_v9": [{"name": "s", "src-uri": uri.format(other_pw)}],  # a newer broker's kind
        }
        with httpx.Client(base_url=rabbitmq.extra["url"] + "/api", auth=("guest", "guest")) as client:
            found = restored_differences(RabbitMQTarget(url=rabbitmq.extra["url"]), client, {}, broker_doc)
    finally:
        api.delete(f"/global-parameters/{param}")
    text = "; ".join(found)
    assert f"global parameter {param!r}" in text and "shovels_v9" in text, text
    assert "mover:***@prod.example" in text, text
    for pw in (live_pw, backup_pw, other_pw):
        assert pw not in text, text
