"""RabbitMQ restores: nothing that would act on production in a copy, and nothing the backup holds
silently missing afterwards. Against the machine's real broker (3.10, management API only)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from blocks.rabbitmq import RabbitMQTarget
from tasks.components import rabbitmq as rmq
from tasks.errors import BadInput, IntegrityError
from tasks.verbs import backup_task, restore_task
from tests.rabbitmq_helpers import lossy, put, seg, serve


@pytest.fixture
def vhosts(api) -> Iterator[list[str]]:
    """Names of vhosts the test creates (on the real broker), deleted afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        api.delete(f"/vhosts/{seg(name)}")


@pytest.fixture
def mover_source(api, vhosts):
    """A source broker whose vhost has shovels, a federation upstream and federation policies
    (plugins this broker does not run): a management API serving what it exports. Yields
    (url, its vhost, the vhost's definitions)."""
    name = "klb-movers-" + secrets.token_hex(4)
    vhosts.append(name)
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
        **{k: [{**i, "vhost": name} for i in v] for k, v in vhost_doc.items() if isinstance(v, list)},
    }
    with serve(name, broker_doc, vhost_doc) as url:
        yield url, name, vhost_doc


LEFT_OUT = {"shovel 'move'", "federation-upstream 'prod'", "policy 'federate'", "policy 'federate-ttl'"}


@pytest.mark.parametrize("scope", ["vhost", "broker"])
def test_a_restore_into_another_vhost_imports_no_shovel_or_federation(
    api, rabbitmq, mover_source, local_store, vhosts, scope
):
    """A copy next to production (into_vhost) got the backup's shovels and federation upstreams
    and policies: imported, they consume the broker's real queues (`amqp://` is this broker) and
    move their messages into the copy. (Here, on a broker without those plugins, the restore was
    refused outright.) They are left out, the rest of a federation policy stays, and the report
    names each."""
    url, name, _ = mover_source
    store = local_store()
    source = RabbitMQTarget(url=url, vhosts=[name] if scope == "vhost" else None)
    manifest = backup_task.fn("rabbitmq", source, store)
    copy = f"{name}-copy"
    vhosts.append(copy)
    report = restore_task.fn(
        manifest, RabbitMQTarget(url=rabbitmq.extra["url"]), store, {"vhost": name, "into_vhost": copy}
    )
    assert set(report["not_imported"]) == LEFT_OUT
    assert "production" in report["not_imported"]["shovel 'move'"]
    live = api.get(f"/definitions/{seg(copy)}").json()
    assert [(p["component"], p["name"]) for p in live["parameters"]] == [("vhost-limits", "limits")]
    policies = {p["name"]: p["definition"] for p in live["policies"]}
    assert policies == {"federate-ttl": {"message-ttl": 1000}, "plain": {"max-length": 10}}
    assert {q["name"] for q in live["queues"]} == {"orders", "audit", "lost"}
    assert name not in [v["name"] for v in api.get("/vhosts").json()], "production was not restored"


def test_a_drill_leaves_out_federation_policies_too(api, rabbitmq, mover_source, local_store):
    """The drill left out shovels and upstreams but imported federation policies: with the
    plugin they federate the drill vhost's queues; without it the import failed the drill."""
    url, name, _ = mover_source
    store = local_store()
    manifest = backup_task.fn("rabbitmq", RabbitMQTarget(url=url, vhosts=[name]), store)
    drill_id = secrets.token_hex(4)
    result = rmq.drill(RabbitMQTarget(url=rabbitmq.extra["url"]), manifest, store, drill_id)
    assert result["verified"] is True and set(result["not_drilled"]) == LEFT_OUT
    assert f"drill-{drill_id}" not in [v["name"] for v in api.get("/vhosts").json()]


def test_a_vhost_parameter_the_import_dropped_fails_the_restore(api, rabbitmq, vhosts, local_store):
    """The check compared queues, exchanges, bindings and policies only: a restore that lost the
    vhost's limits (runtime parameters, like shovels and federation upstreams) passed."""
    name = "klb-params-" + secrets.token_hex(4)
    vhosts.append(name)
    put(api, f"/vhosts/{seg(name)}", {})
    put(api, f"/queues/{seg(name)}/q", {"durable": True})
    put(api, f"/vhost-limits/{seg(name)}/max-connections", {"value": 7})
    target = RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=[name])
    store = local_store()
    manifest = backup_task.fn("rabbitmq", target, store)
    assert api.delete(f"/vhosts/{seg(name)}").status_code == 204

    with lossy("parameters"), pytest.raises(IntegrityError, match="vhost-limits 'limits'.*missing"):
        restore_task.fn(manifest, target, store, {})
    assert api.delete(f"/vhosts/{seg(name)}").status_code == 204
    restore_task.fn(manifest, target, store, {})
    assert api.get(f"/vhost-limits/{seg(name)}").json()[0]["value"] == {"max-connections": 7}


def test_operator_policies_are_restored_checked_and_reported(api, rabbitmq, vhosts, local_store):
    """The report's `compared` (and docs/rabbitmq.md) said operator policies are not exported and
    not seen. RabbitMQ exports them as runtime parameters (component operator_policy), the import
    sets them, and the restore checks and reports them like any other parameter."""
    name = "klb-oppol-" + secrets.token_hex(4)
    vhosts.append(name)
    put(api, f"/vhosts/{seg(name)}", {})
    cap = {"pattern": "^q", "definition": {"max-length": 100}, "priority": 0, "apply-to": "queues"}
    put(api, f"/operator-policies/{seg(name)}/cap", cap)
    target = RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=[name])
    store = local_store()
    manifest = backup_task.fn("rabbitmq", target, store)
    assert api.delete(f"/vhosts/{seg(name)}").status_code == 204

    with lossy("parameters"), pytest.raises(IntegrityError, match="operator_policy 'cap'.*missing"):
        restore_task.fn(manifest, target, store, {})
    assert api.delete(f"/vhosts/{seg(name)}").status_code == 204
    report = restore_task.fn(manifest, target, store, {})
    assert api.get(f"/operator-policies/{seg(name)}/cap").json()["definition"] == {"max-length": 100}
    assert f"parameter operator_policy 'cap' in vhost {name!r}" in report["created"]
    assert "operator polic" not in report["compared"].split("Not seen")[-1]


@pytest.mark.broker_wide  # a whole-broker restore
def test_a_global_parameter_the_import_dropped_fails_a_broker_restore(api, rabbitmq, local_store):
    """Global parameters (cluster_name and the like) were not compared after a broker import."""
    param = "klb-test-" + secrets.token_hex(4)
    put(api, f"/global-parameters/{param}", {"value": {"owner": "klb"}})
    try:
        target = RabbitMQTarget(url=rabbitmq.extra["url"])
        store = local_store(encryption_key=SecretStr("rmq-key"))
        manifest = backup_task.fn("rabbitmq", target, store)
        assert api.delete(f"/global-parameters/{param}").status_code == 204
        with lossy("global_parameters"), pytest.raises(IntegrityError, match=f"global parameter '{param}'"):
            restore_task.fn(manifest, target, store, {})
        restore_task.fn(manifest, target, store, {})
        assert api.get(f"/global-parameters/{param}").json()["value"] == {"owner": "klb"}
    finally:
        api.delete(f"/global-parameters/{param}")


def test_a_kind_of_definition_this_broker_does_not_import_fails_the_restore(
    api, rabbitmq, vhosts, local_store
):
    """A broker backup carrying a kind of definition the check has no rule for (a newer
    RabbitMQ's; here operator policies, which 3.10 neither exports nor imports) is compared with
    the live export item by item: the import ignored it, so the restore fails and names it."""
    name = "klb-newer-" + secrets.token_hex(4)
    vhosts.append(name)
    cap = {"vhost": name, "name": "cap", "pattern": ".*", "apply-to": "queues", "priority": 0,
           "definition": {"max-length": 100}}  # fmt: skip
    broker_doc = {
        "users": [], "vhosts": [{"name": name}], "permissions": [], "parameters": [], "policies": [],
        "queues": [{"name": "q", "vhost": name, "durable": True, "auto_delete": False, "arguments": {}}],
        "exchanges": [], "bindings": [], "operator_policies": [cap],
    }  # fmt: skip
    store = local_store()
    with serve(name, broker_doc, {}) as url:
        manifest = backup_task.fn("rabbitmq", RabbitMQTarget(url=url), store)
    with pytest.raises(IntegrityError, match="operator_policies .*cap.* is missing"):
        restore_task.fn(manifest, RabbitMQTarget(url=rabbitmq.extra["url"]), store, {})
    assert [q["name"] for q in api.get(f"/queues/{seg(name)}").json()] == ["q"], "the rest was imported"


@pytest.mark.parametrize("scope", ["vhost", "broker"])
def test_a_federation_policy_on_a_broker_without_federation_is_refused_before_anything(
    api, rabbitmq, vhosts, local_store, scope
):
    """RabbitMQ validates a policy's keys only while importing it: after a broker import's users
    and vhosts (and a vhost's parameters) are in. A federation policy where the federation plugin
    does not run is refused first, like a federation upstream, and nothing changes. (The backup
    comes from another broker, whose federation a restore imports only when told: this broker
    replaces it, import_message_movers.)"""
    name, user = "klb-fedpol-" + secrets.token_hex(4), "klb-fedpol-" + secrets.token_hex(4)
    vhosts.append(name)
    policy = {"name": "federate", "pattern": "^orders$", "apply-to": "queues", "priority": 0,
              "definition": {"federation-upstream-set": "all"}}  # fmt: skip
    vhost_doc = {"parameters": [], "policies": [policy], "queues": [], "exchanges": [], "bindings": []}
    broker_doc = {
        "users": [{"name": user, "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": [], "limits": {}}],
        "vhosts": [{"name": name}], "permissions": [], "parameters": [], "queues": [], "exchanges": [],
        "bindings": [], "policies": [{**policy, "vhost": name}],
    }  # fmt: skip
    store = local_store()
    try:
        with serve(name, broker_doc, vhost_doc) as url:
            source = RabbitMQTarget(url=url, vhosts=[name] if scope == "vhost" else None)
            manifest = backup_task.fn("rabbitmq", source, store)
        target = RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=source.vhosts)
        with pytest.raises(BadInput, match="nothing was changed.*policy 'federate'.*rabbitmq_federation"):
            restore_task.fn(manifest, target, store, {"import_message_movers": True})
        assert name not in [v["name"] for v in api.get("/vhosts").json()]
        assert api.get(f"/users/{user}").status_code == 404
    finally:
        api.delete(f"/users/{user}")


def test_the_approval_form_says_a_copy_under_into_vhost_is_aside():
    """The approval form said every RabbitMQ restore imports over the current definitions: a copy
    under into_vhost touches no production vhost, and what it leaves out is part of the action."""
    from tasks.operations.plan import action_of
    from tasks.verbs import restore_options

    copy = action_of(
        "rabbitmq", restore_options("rabbitmq", {"vhost": "orders", "into_vhost": "orders-check"})
    )
    assert "aside" in copy and "'orders' of the backup as 'orders-check'" in copy and "shovels" in copy
    assert "in place" in action_of("rabbitmq", restore_options("rabbitmq", {"vhost": "orders"}))


def bound(source: str, destination: str, kind: str, key: str) -> dict[str, Any]:
    return {"source": source, "destination": destination, "destination_type": kind, "routing_key": key,
            "arguments": {}}  # fmt: skip


@pytest.mark.parametrize("exists", [True, False])
def test_a_binding_to_an_object_neither_backed_up_nor_live_is_refused_before_anything(
    api, rabbitmq, vhosts, local_store, exists
):
    """An export is not atomic (a queue declared while it runs can be missing from its queues but
    not from its bindings), and a backup may be edited. RabbitMQ's import drops a binding whose
    source or destination does not exist without a word: the restore imported the rest (here a
    queue and an exchange, or a whole new vhost) and then failed its check. Refused before anything."""
    name = "klb-dangling-" + secrets.token_hex(4)
    vhosts.append(name)
    vhost_doc = {
        "rabbit_version": "3.10.8", "parameters": [], "policies": [],
        "queues": [{"name": "q1", "durable": True, "auto_delete": False, "arguments": {}}],
        "exchanges": [{"name": "x", "type": "topic", "durable": True, "auto_delete": False, "internal": False,
                       "arguments": {}}],
        "bindings": [
            bound("x", "q1", "queue", "ok"),
            bound("amq.topic", "x", "exchange", "a"),  # a default exchange: every vhost has it
            bound("x", "gone", "queue", "k"),
            bound("nowhere", "q1", "queue", ""),
        ],
    }  # fmt: skip
    store = local_store()
    with serve(name, {}, vhost_doc) as url:
        manifest = backup_task.fn("rabbitmq", RabbitMQTarget(url=url, vhosts=[name]), store)
    if exists:
        put(api, f"/vhosts/{seg(name)}", {})
    target = RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=[name])
    before = api.get("/definitions").json()
    with pytest.raises(BadInput, match="nothing was changed.*queue 'gone'.*exchange 'nowhere'") as refused:
        restore_task.fn(manifest, target, store, {})
    assert "amq.topic" not in str(refused.value)
    after = api.get("/definitions").json()
    assert [v for v in after["vhosts"] if v["name"] == name] == ([{"name": name}] if exists else [])
    assert [q for q in after["queues"] if q["vhost"] == name] == []
    assert {k: v for k, v in after.items() if k != "vhosts"} == {
        k: v for k, v in before.items() if k != "vhosts"
    }


@pytest.mark.parametrize("exists", [True, False])
@pytest.mark.parametrize("unknown", ["policy key", "queue type"])
def test_a_definition_this_broker_does_not_know_is_refused_before_anything(
    api, rabbitmq, vhosts, local_store, exists, unknown
):
    """A backup of a newer RabbitMQ holds a policy key (consumer-timeout, 3.12) or a queue type
    this one does not know: the import validates each only as it comes to it, and stopped there,
    the vhost's limits (or its exchange and first queue) in place and the rest missing. Tried
    first in a scratch vhost (deleted), refused, and nothing changes."""
    name = "klb-newer-policy-" + secrets.token_hex(4)
    vhosts.append(name)
    vhost_doc = {
        "rabbit_version": "3.12.0",
        "parameters": [{"component": "vhost-limits", "name": "limits", "value": {"max-connections": 5}}],
        "policies": [{"name": "p", "pattern": ".*", "apply-to": "queues", "priority": 0,
                      "definition": {"consumer-timeout": 1000, "message-ttl": 1000}}],
        "queues": [{"name": "q1", "durable": True, "auto_delete": False, "arguments": {}}],
        "exchanges": [{"name": "x", "type": "direct", "durable": True, "auto_delete": False,
                       "internal": False, "arguments": {}}],
        "bindings": [],
    }  # fmt: skip
    if unknown == "queue type":
        vhost_doc["policies"][0]["definition"] = {"message-ttl": 1000}
        vhost_doc["queues"].append({"name": "q10", "durable": True, "auto_delete": False,
                                    "arguments": {"x-queue-type": "klb-unknown"}})  # fmt: skip
    store = local_store()
    with serve(name, {}, vhost_doc) as url:
        manifest = backup_task.fn("rabbitmq", RabbitMQTarget(url=url, vhosts=[name]), store)
    if exists:
        put(api, f"/vhosts/{seg(name)}", {})
    target = RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=[name])
    before = api.get("/definitions").json()
    why = "consumer-timeout" if unknown == "policy key" else "queue 'q10'.*klb-unknown"
    with pytest.raises(BadInput, match=f"nothing was changed.*vhost '{name}'.*{why}"):
        restore_task.fn(manifest, target, store, {})
    after = api.get("/definitions").json()
    assert [v["name"] for v in after["vhosts"] if v["name"] == name] == ([name] if exists else [])
    assert not [v for v in after["vhosts"] if v["name"].startswith("klb-check-")], "the scratch vhost is gone"
    assert {k: v for k, v in after.items() if k != "vhosts"} == {
        k: v for k, v in before.items() if k != "vhosts"
    }
