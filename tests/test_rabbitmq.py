"""RabbitMQ definitions against the machine's real broker (management API on 127.0.0.1:15672).

Every test works in its own vhost and deletes it afterwards.
"""

from __future__ import annotations

import logging
import secrets

import httpx
import pytest
from pydantic import SecretStr

from blocks.rabbitmq import RabbitMQTarget
from tasks.components import rabbitmq as rmq
from tasks.errors import BadInput, ConfigurationError, IsolationTaken
from tasks.storage.backends import backend_for
from tasks.storage.catalog import list_backups
from tasks.verbs import backup_task, check_restore, restore_task, verify_task
from tests.rabbitmq_helpers import seg, serve


@pytest.fixture
def vhost(api):
    """A fresh vhost with a classic and a quorum queue, exchanges, bindings and a policy."""
    name = "klb-test-" + secrets.token_hex(4)
    created = []

    def put(path, body):
        r = api.put(path, json=body)
        assert r.status_code in (201, 204), (path, r.text)

    put(f"/vhosts/{name}", {"description": "orders, EU", "tags": "prod,eu"})
    created.append(name)
    v = seg(name)
    put(
        f"/exchanges/{v}/orders",
        {"type": "topic", "durable": True, "arguments": {"alternate-exchange": "unrouted"}},
    )
    put(f"/exchanges/{v}/unrouted", {"type": "fanout", "durable": True})
    put(f"/exchanges/{v}/audit", {"type": "headers", "durable": True, "internal": False})
    put(
        f"/queues/{v}/orders.classic",
        {"durable": True, "arguments": {"x-max-length": 1000, "x-queue-type": "classic"}},
    )
    put(f"/queues/{v}/orders.quorum", {"durable": True, "arguments": {"x-queue-type": "quorum"}})
    put(f"/queues/{v}/lost", {"durable": True})
    for src, dst, key in (
        ("orders", "orders.classic", "order.#"),
        ("orders", "orders.quorum", "order.eu.*"),
        ("unrouted", "lost", ""),
    ):
        assert (
            api.post(
                f"/bindings/{v}/e/{src}/q/{seg(dst)}", json={"routing_key": key, "arguments": {}}
            ).status_code
            == 201
        )
    assert (
        api.post(
            f"/bindings/{v}/e/orders/e/audit", json={"routing_key": "order.audit", "arguments": {}}
        ).status_code
        == 201
    )
    put(
        f"/policies/{v}/ttl",
        {
            "pattern": "^orders\\.classic$",
            "definition": {"message-ttl": 60000},
            "apply-to": "queues",
            "priority": 2,
        },
    )
    yield name
    for n in created + [
        n for n in list_vhosts(api) if n.startswith(("drill-", "restored-")) and name[-8:] in n
    ]:
        api.delete(f"/vhosts/{seg(n)}")


def vhost_meta(api, vhost: str) -> dict:
    """What the vhost was created with besides its name: lost if the restore re-creates it bare."""
    live = api.get(f"/vhosts/{seg(vhost)}").json()
    return {"description": live.get("description"), "tags": sorted(live.get("tags") or [])}


def list_vhosts(api) -> list[str]:
    return [v["name"] for v in api.get("/vhosts").json()]


def definitions(api, vhost: str) -> dict:
    """The vhost's definitions, in a canonical order, without the broker version."""
    doc = api.get(f"/definitions/{seg(vhost)}").json()
    out = {}
    for kind in ("queues", "exchanges", "bindings", "policies", "parameters"):
        items = [{k: v for k, v in i.items() if k != "vhost"} for i in doc.get(kind, [])]
        out[kind] = sorted(items, key=lambda i: repr(sorted(i.items())))
    return out


def wait_for_messages(target, vhost: str, n: int) -> None:
    """The management API's message counts lag the broker by its stats interval."""
    import time

    deadline = time.monotonic() + 30
    while rmq.describe_current_state(target)["vhosts"][vhost]["messages"] != n:
        assert time.monotonic() < deadline, f"{vhost} never showed {n} messages"
        time.sleep(0.5)


@pytest.fixture
def target(rabbitmq, vhost) -> RabbitMQTarget:
    return RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=[vhost])


def test_vhost_back_up_delete_restore_identical(api, vhost, target, local_store, request):
    """Deleting a vhost deletes every permission on it, and its own export carries none: a
    per-vhost backup records them, and its restore puts them back (it brought the vhost back
    with nobody allowed in it, and said nothing)."""
    store = local_store()
    user = f"klb-app-{vhost[-8:]}"
    assert api.put(f"/users/{user}", json={"password": "pw", "tags": ""}).status_code == 201
    request.addfinalizer(lambda: api.delete(f"/users/{user}"))
    perms = {"configure": "^$", "write": "^orders$", "read": "^orders\\..*"}
    topic = {"exchange": "orders", "write": "^order\\.eu\\.", "read": ".*"}
    assert api.put(f"/permissions/{seg(vhost)}/{user}", json=perms).status_code == 201
    assert api.put(f"/topic-permissions/{seg(vhost)}/{user}", json=topic).status_code == 201
    access = sorted(
        (p["user"], p["configure"], p["write"], p["read"])
        for p in api.get(f"/vhosts/{seg(vhost)}/permissions").json()
    )
    before, meta = definitions(api, vhost), vhost_meta(api, vhost)
    assert meta == {"description": "orders, EU", "tags": ["eu", "prod"]}
    msg = {"properties": {}, "routing_key": "order.eu.1", "payload": "order 1", "payload_encoding": "string"}
    assert api.post(f"/exchanges/{seg(vhost)}/orders/publish", json=msg).json()["routed"] is True
    wait_for_messages(target, vhost, 2)  # the classic and the quorum queue
    manifest = backup_task.fn("rabbitmq", target, store)
    assert manifest.engine["counts"] == {
        "users": 0, "vhosts": 1, "permissions": 2, "policies": 1,  # the user's and guest's
        "queues": 3, "exchanges": 3, "bindings": 4, "parameters": 0,
    }  # fmt: skip
    assert verify_task.fn(manifest, store, target)["component_check"]["counts"] == manifest.engine["counts"]

    assert api.delete(f"/vhosts/{seg(vhost)}").status_code == 204
    assert vhost not in list_vhosts(api)

    report = restore_task.fn(manifest, target, store, {})
    assert report["created_vhosts"] == [vhost]
    assert "Messages are not part of definitions" in report["messages"]
    after = definitions(api, vhost)
    assert after == before and vhost_meta(api, vhost) == meta
    queue_types = {q["name"]: q["type"] for q in api.get(f"/queues/{seg(vhost)}").json()}
    assert queue_types == {"orders.classic": "classic", "orders.quorum": "quorum", "lost": "classic"}
    state = rmq.describe_current_state(target)
    assert state["vhosts"][vhost] == {"queues": 3, "messages": 0}, "messages are not part of definitions"
    assert "not part of definitions" in state["note"]
    live = api.get(f"/vhosts/{seg(vhost)}/permissions").json()
    assert sorted((p["user"], p["configure"], p["write"], p["read"]) for p in live) == access
    live_topic = api.get(f"/topic-permissions/{seg(vhost)}/{user}").json()
    assert [{k: t[k] for k in topic} for t in live_topic] == [topic]
    assert f"permissions of user {user!r} on vhost {vhost!r}" in report["created"]


def test_broker_backup_restores_one_vhost_under_another_name(api, vhost, rabbitmq, local_store):
    store = local_store()
    manifest = backup_task.fn("rabbitmq", RabbitMQTarget(url=rabbitmq.extra["url"]), store)
    counts = manifest.engine["counts"]
    assert (
        counts["users"] >= 1
        and counts["vhosts"] >= 2
        and counts["queues"] >= 3
        and counts["permissions"] >= 1
    )
    assert manifest.engine["scope"] == "broker"

    copy = f"restored-{vhost[-8:]}"
    target = RabbitMQTarget(url=rabbitmq.extra["url"])
    report = restore_task.fn(manifest, target, store, {"vhost": vhost, "into_vhost": copy})
    assert report["restored_vhosts"][copy]["queues"] == 3
    assert definitions(api, copy) == definitions(api, vhost)
    assert vhost_meta(api, copy) == vhost_meta(api, vhost)
    # a copy goes aside, into a new vhost: into one that exists the import merged with what was
    # there (found by an adversarial review); refused, the vhost left as it is
    before = definitions(api, copy)
    with pytest.raises(BadInput, match=rf"into_vhost '{copy}' exists on the broker"):
        restore_task.fn(manifest, target, store, {"vhost": vhost, "into_vhost": copy})
    assert definitions(api, copy) == before
    api.delete(f"/vhosts/{seg(copy)}")


def test_drill_imports_into_a_drill_vhost_and_deletes_it(api, vhost, target, local_store):
    store = local_store()
    manifest = backup_task.fn("rabbitmq", target, store)
    before = definitions(api, vhost)
    result = rmq.drill(target, manifest, store, vhost[-8:])
    assert result["verified"] is True
    assert result["checks"]["source_vhost"] == vhost and result["checks"]["queues"] == 3
    assert f"drill-{vhost[-8:]}" not in list_vhosts(api)
    assert definitions(api, vhost) == before, "a drill never touches the production vhost"

    # a vhost already under the drill's name is not the drill's: refused, and left as it is
    taken = f"drill-{vhost[-8:]}"
    assert api.put(f"/vhosts/{seg(taken)}", json={}).status_code in (201, 204)
    try:
        with pytest.raises(IsolationTaken, match="already exists"):
            rmq.drill(target, manifest, store, vhost[-8:])
        assert taken in list_vhosts(api)
    finally:
        api.delete(f"/vhosts/{seg(taken)}")


def test_wrong_password_is_clear_secret_free_and_leaves_no_backup(target, local_store, caplog):
    store = local_store()
    bad = target.model_copy(update={"password": SecretStr("s3cret-wrong-pw")})
    with (
        caplog.at_level(logging.DEBUG),
        pytest.raises(ConfigurationError, match="refused user 'guest'") as err,
    ):
        backup_task.fn("rabbitmq", bad, store)
    assert "s3cret-wrong-pw" not in str(err.value) and "s3cret-wrong-pw" not in caplog.text
    assert "s3cret-wrong-pw" not in repr(bad)
    assert list(backend_for(store).list_keys(store.prefix)) == []


def test_unreachable_broker_and_unknown_vhost_fail_clearly(target, local_store):
    store = local_store()
    with pytest.raises(ConfigurationError, match="unreachable.*rabbitmq_management"):
        backup_task.fn("rabbitmq", target.model_copy(update={"url": "http://127.0.0.1:9"}), store)
    with pytest.raises(BadInput, match="unknown vhost"):
        backup_task.fn("rabbitmq", target.model_copy(update={"vhosts": ["no-such-vhost-klb"]}), store)
    assert list_backups(store, "rabbitmq") == []


def test_restore_refuses_unknown_vhost_and_conflicts_without_changing_anything(
    api, vhost, target, local_store
):
    store = local_store()
    manifest = backup_task.fn("rabbitmq", target, store)
    # refused before the checklist's safety backup and approval, and recorded as changing nothing
    # (a 'failed' record without it let a rollback put the safety backup over later writes)
    with pytest.raises(BadInput, match="not in this backup"):
        check_restore(manifest, target, store, {"vhost": "no-such-vhost-klb"})
    with pytest.raises(BadInput, match="not in this backup") as refused:
        restore_task.fn(manifest, target, store, {"vhost": "no-such-vhost-klb"})
    assert getattr(refused.value, "target_untouched", False)
    assert "no-such-vhost-klb" not in list_vhosts(api)

    # The classic queue comes back with other arguments and one binding is gone: the import would
    # fail half-way, so the restore refuses before it changes anything.
    v = seg(vhost)
    assert api.delete(f"/queues/{v}/orders.classic").status_code == 204
    assert (
        api.put(
            f"/queues/{v}/orders.classic", json={"durable": True, "arguments": {"x-max-length": 5}}
        ).status_code
        == 201
    )
    api.delete(f"/exchanges/{v}/audit")
    before = definitions(api, vhost)
    with pytest.raises(BadInput, match="nothing was changed.*orders.classic") as refused:
        restore_task.fn(manifest, target, store, {})
    assert getattr(refused.value, "target_untouched", False)
    assert definitions(api, vhost) == before


def test_backup_and_restore_through_the_prefect_flows(prefect_server, api, vhost, target, local_store):
    from flows.backup import backup_component
    from flows.restore import restore_component

    store = local_store()
    before = definitions(api, vhost)
    block_name = f"rmq-{vhost[-8:]}"
    target.save(block_name, overwrite=True)  # deployments pass the block's name
    result = backup_component("rabbitmq", target=block_name, store=store)
    assert result.verified
    api.delete(f"/vhosts/{seg(vhost)}")
    report = restore_component("rabbitmq", backup_id="latest", target=target, store=store)
    assert report["backup_id"] == result.id and report["created_vhosts"] == [vhost]
    assert definitions(api, vhost) == before


@pytest.mark.broker_wide  # brings back every vhost it backed up, other tests' included
def test_whole_broker_restore_brings_back_vhost_user_password_and_permissions(
    api, vhost, rabbitmq, local_store
):
    url = rabbitmq.extra["url"]
    user, password = f"klb-user-{vhost[-8:]}", "pw-" + secrets.token_hex(8)
    assert api.put(f"/users/{user}", json={"password": password, "tags": "management"}).status_code == 201
    perms = {"configure": "^orders.*", "write": ".*", "read": ".*"}
    assert api.put(f"/permissions/{seg(vhost)}/{user}", json=perms).status_code == 201
    try:
        store = local_store(encryption_key=SecretStr("rmq-key"))  # the backup holds password hashes
        before, meta = definitions(api, vhost), vhost_meta(api, vhost)
        manifest = backup_task.fn("rabbitmq", RabbitMQTarget(url=url), store)
        api.delete(f"/vhosts/{seg(vhost)}")
        api.delete(f"/users/{user}")

        report = restore_task.fn(manifest, RabbitMQTarget(url=url), store, {})
        assert report["broker_wide"] is True and vhost in report["created_vhosts"]
        assert definitions(api, vhost) == before and vhost_meta(api, vhost) == meta
        live = api.get(f"/permissions/{seg(vhost)}/{user}").json()
        assert {k: live[k] for k in perms} == perms
        whoami = httpx.get(f"{url}/api/whoami", auth=(user, password), timeout=10)
        assert whoami.status_code == 200 and whoami.json()["name"] == user, "the password came back"
    finally:
        api.delete(f"/users/{user}")


def test_one_vhost_of_a_broker_backup_brings_back_its_permissions_and_topic_permissions(
    api, vhost, rabbitmq, local_store
):
    """Deleting a vhost deletes every permission on it: restoring that vhost from a whole-broker
    backup must put them back (for users that exist), not only its queues and exchanges."""
    url, v = rabbitmq.extra["url"], seg(vhost)
    user, gone = f"klb-user-{vhost[-8:]}", f"klb-gone-{vhost[-8:]}"
    perms = {"configure": "^orders.*", "write": ".*", "read": "^lost$"}
    topic = {"exchange": "orders", "write": "^order\\.", "read": ".*"}
    for name in (user, gone):
        assert api.put(f"/users/{name}", json={"password": "pw", "tags": ""}).status_code == 201
        assert api.put(f"/permissions/{v}/{name}", json=perms).status_code == 201
    assert api.put(f"/topic-permissions/{v}/{user}", json=topic).status_code == 201
    try:
        store = local_store(encryption_key=SecretStr("rmq-key"))
        before = definitions(api, vhost)
        manifest = backup_task.fn("rabbitmq", RabbitMQTarget(url=url), store)
        api.delete(f"/vhosts/{v}")
        api.delete(f"/users/{gone}")

        report = restore_task.fn(manifest, RabbitMQTarget(url=url), store, {"vhost": vhost})
        assert definitions(api, vhost) == before
        live = api.get(f"/permissions/{v}/{user}").json()
        assert {k: live[k] for k in perms} == perms
        live_topic = api.get(f"/topic-permissions/{v}/{user}").json()
        assert [{k: t[k] for k in topic} for t in live_topic] == [topic]
        assert gone in report["permissions_not_restored"], "a user that no longer exists is named"
        assert api.get(f"/users/{gone}").status_code == 404, "a one-vhost restore creates no users"
    finally:
        api.delete(f"/users/{user}")
        api.delete(f"/users/{gone}")


def test_live_queue_limit_below_the_backup_refuses_before_changing_anything(api, vhost, target, local_store):
    """RabbitMQ checks a vhost's live max-queues before it imports (after the users of a broker
    import): the restore refuses first, saying what to do, and changes nothing."""
    store = local_store()
    manifest = backup_task.fn("rabbitmq", target, store)
    v = seg(vhost)
    assert api.delete(f"/queues/{v}/lost").status_code == 204
    assert api.delete(f"/exchanges/{v}/audit").status_code == 204
    assert api.put(f"/vhost-limits/{v}/max-queues", json={"value": 2}).status_code == 204
    before = definitions(api, vhost)
    with pytest.raises(BadInput, match="nothing was changed.*max-queues"):
        restore_task.fn(manifest, target, store, {})
    assert definitions(api, vhost) == before

    assert api.put(f"/vhost-limits/{v}/max-queues", json={"value": 3}).status_code == 204
    restore_task.fn(manifest, target, store, {})
    assert {q["name"] for q in api.get(f"/queues/{v}").json()} == {"orders.classic", "orders.quorum", "lost"}


@pytest.fixture
def plugin_source(api):
    """A source broker that had plugins the machine's broker lacks (the delayed-message exchange,
    shovels): a management API serving what such a broker exports, for the backup to read."""
    name, user = "klb-plugins-" + secrets.token_hex(4), "klb-plugins-" + secrets.token_hex(4)
    vhost_doc = {
        "rabbit_version": "3.10.8",
        "parameters": [
            {"component": "shovel", "name": "move", "value": {"src-uri": "amqp://", "src-queue": "a",
                                                               "dest-uri": "amqp://", "dest-queue": "b"}},
        ],
        "policies": [],
        "queues": [{"name": "delayed.q", "durable": True, "auto_delete": False, "arguments": {}}],
        "exchanges": [{"name": "delayed", "type": "x-delayed-message", "durable": True, "auto_delete": False,
                       "internal": False, "arguments": {"x-delayed-type": "direct"}}],
        "bindings": [],
    }  # fmt: skip
    broker_doc = {
        "users": [{"name": user, "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": [], "limits": {}}],
        "vhosts": [{"name": name}],
        "permissions": [{"user": user, "vhost": name, "configure": ".*", "write": ".*", "read": ".*"}],
        **{k: [{**i, "vhost": name} for i in v] for k, v in vhost_doc.items() if isinstance(v, list)},
    }  # fmt: skip
    with serve(name, broker_doc, vhost_doc) as url:
        try:
            yield url, name, user, vhost_doc
        finally:
            api.delete(f"/vhosts/{seg(name)}")
            api.delete(f"/users/{user}")


@pytest.mark.parametrize("scope", ["vhost", "broker"])
def test_a_backup_using_plugins_this_broker_lacks_is_refused_before_anything_changes(
    api, rabbitmq, plugin_source, local_store, scope
):
    """RabbitMQ checks exchange types and parameter components only while importing: after the
    users and vhosts of a broker import are in, or after the restore created the vhost. The
    restore refuses first, names the plugins, and changes nothing. (The backup comes from another
    broker, whose shovels a restore imports only when told: this broker replaces it.)"""
    url, name, user, _ = plugin_source
    store = local_store()
    source = RabbitMQTarget(url=url, vhosts=[name] if scope == "vhost" else None)
    manifest = backup_task.fn("rabbitmq", source, store)
    with pytest.raises(BadInput, match="nothing was changed") as err:
        restore_task.fn(
            manifest,
            RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=source.vhosts),
            store,
            {"import_message_movers": True},
        )
    assert "'x-delayed-message'" in str(err.value) and "rabbitmq_shovel" in str(err.value)
    assert name not in list_vhosts(api)
    assert api.get(f"/users/{user}").status_code == 404


@pytest.mark.broker_wide  # a whole-broker backup and restore attempt
def test_a_broker_restore_that_would_reset_its_own_users_password_is_refused_before_anything(
    api, vhost, rabbitmq, local_store
):
    """The backup holds the restoring administrator's password hash from backup time. Rotated
    since, the import put the old password back and every request after it was refused: the
    vhosts were imported, the check never ran, and the error said 'wrong password? nothing was
    changed'. Now the restore compares the target's password with the backed-up hash first."""
    url = rabbitmq.extra["url"]
    admin, old, new = f"klb-admin-{vhost[-8:]}", "old-" + secrets.token_hex(8), "new-" + secrets.token_hex(8)
    assert api.put(f"/users/{admin}", json={"password": old, "tags": "administrator"}).status_code == 201
    try:
        for v in list_vhosts(api):
            api.put(f"/permissions/{seg(v)}/{admin}", json={"configure": ".*", "write": ".*", "read": ".*"})
        store = local_store(encryption_key=SecretStr("rmq-key"))
        manifest = backup_task.fn("rabbitmq", RabbitMQTarget(url=url, username=admin, password=old), store)
        assert api.put(f"/users/{admin}", json={"password": new, "tags": "administrator"}).status_code == 204
        before = definitions(api, vhost)
        assert api.delete(f"/vhosts/{seg(vhost)}").status_code == 204

        target = RabbitMQTarget(url=url, username=admin, password=SecretStr(new))
        with pytest.raises(BadInput, match="nothing was changed.*password it had at backup time") as err:
            restore_task.fn(manifest, target, store, {})
        assert new not in str(err.value) and old not in str(err.value)
        assert vhost not in list_vhosts(api), "the restore imported before it refused"
        assert httpx.get(f"{url}/api/whoami", auth=(admin, new), timeout=10).status_code == 200

        # a password that is the backed-up one again restores (the import keeps it)
        assert api.put(f"/users/{admin}", json={"password": old, "tags": "administrator"}).status_code == 204
        report = restore_task.fn(manifest, RabbitMQTarget(url=url, username=admin, password=old), store, {})
        assert vhost in report["created_vhosts"] and definitions(api, vhost) == before
    finally:
        api.delete(f"/users/{admin}")


def test_a_broker_backup_that_demotes_the_restoring_user_is_named():
    """The import sets the restoring user's tags too: without 'administrator' every request after
    it would be refused (403), so the restore refuses first (the same check as the password's)."""
    target = RabbitMQTarget(username="ops", password=SecretStr("pw"))
    doc = {"users": [{"name": "ops", "password_hash": "", "tags": ["management"]}]}
    assert [p.split(" ")[1] for p in rmq.self_lockout(target, doc)] == ["sets", "takes"]
    assert rmq.self_lockout(target, {"users": [{"name": "other", "tags": []}]}) == []


@pytest.mark.broker_wide  # brings back every vhost it backed up, other tests' included
def test_whole_broker_restore_brings_back_users_tags_and_limits_exactly(api, vhost, rabbitmq, local_store):
    """RabbitMQ's import replaces a user's tags but merges its limits: a limit set since the
    backup stayed, and the check (password hash only) called the users restored."""
    url = rabbitmq.extra["url"]
    user = f"klb-user-{vhost[-8:]}"
    assert api.put(f"/users/{user}", json={"password": "pw-1234", "tags": "management"}).status_code == 201
    assert api.put(f"/user-limits/{user}/max-connections", json={"value": 5}).status_code == 204
    try:
        store = local_store(encryption_key=SecretStr("rmq-key"))
        manifest = backup_task.fn("rabbitmq", RabbitMQTarget(url=url), store)
        assert (
            api.put(f"/users/{user}", json={"password": "pw-1234", "tags": "monitoring"}).status_code == 204
        )
        assert api.put(f"/user-limits/{user}/max-channels", json={"value": 3}).status_code == 204
        assert api.put(f"/user-limits/{user}/max-connections", json={"value": 50}).status_code == 204

        restore_task.fn(manifest, RabbitMQTarget(url=url), store, {})
        live = api.get(f"/users/{user}").json()
        assert (live["tags"], live["limits"]) == (["management"], {"max-connections": 5})
    finally:
        api.delete(f"/users/{user}")


def test_a_drill_never_imports_shovels_or_federation_upstreams(api, rabbitmq, plugin_source, local_store):
    """A shovel or federation upstream in the drill vhost would run against the broker's real
    queues (src-uri 'amqp://' is this broker) for as long as the drill lasts, and what it moved
    into the drill vhost is deleted with it; on a broker without the plugin the drill failed
    outright. The drill leaves them out and says so."""
    url, name, _, vhost_doc = plugin_source
    vhost_doc["exchanges"] = []  # only the shovel needs a plugin now
    store = local_store()
    manifest = backup_task.fn("rabbitmq", RabbitMQTarget(url=url, vhosts=[name]), store)
    drill_id = secrets.token_hex(4)
    result = rmq.drill(RabbitMQTarget(url=rabbitmq.extra["url"]), manifest, store, drill_id)
    assert result["verified"] is True and result["checks"]["queues"] == 1
    assert list(result["not_drilled"]) == ["shovel 'move'"]
    assert f"drill-{drill_id}" not in list_vhosts(api)
