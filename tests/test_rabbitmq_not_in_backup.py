"""A RabbitMQ restore is an import: it adds and overwrites, and deletes nothing. What the broker
holds in the restored scope that the backup does not (a queue, binding, policy or permission
created since) stayed, and the report said `restored` and `verified` as if the vhost were the
backup's. The restore now names every such definition in `not_in_backup`, and the vhost is the
backup's whole but for exactly those. The machine's RabbitMQ, a vhost and users of the test's own."""

from __future__ import annotations

import secrets

import pytest

from blocks.rabbitmq import RabbitMQTarget
from tasks.components.rabbitmq.written import keyed
from tasks.verbs import backup_task, restore_task
from tests.rabbitmq_helpers import ALL, put, seg


def bind(api, vhost: str, path: str, key: str, arguments: dict | None = None) -> None:
    r = api.post(f"/bindings/{seg(vhost)}/{path}", json={"routing_key": key, "arguments": arguments or {}})
    assert r.status_code == 201, r.text


@pytest.fixture
def scope(api):
    """A vhost with every kind of vhost definition, and two users (one allowed on it at backup)."""
    tag = secrets.token_hex(4)
    vhost, users = f"klb-extra {tag}/ü", [f"klb-extra-a-{tag}", f"klb-extra-b-{tag}"]
    v = seg(vhost)
    put(api, f"/vhosts/{v}", {"description": "exactness", "tags": "eu"})
    for user in users:
        put(api, f"/users/{user}", {"password": secrets.token_hex(8), "tags": ""})
    try:
        put(api, f"/permissions/{v}/{users[0]}", ALL)
        put(api, f"/topic-permissions/{v}/{users[0]}", {"exchange": "x", "write": "^a", "read": ".*"})
        put(
            api,
            f"/exchanges/{v}/x",
            {"type": "topic", "durable": True, "arguments": {"alternate-exchange": "ae"}},
        )
        put(api, f"/exchanges/{v}/ae", {"type": "fanout", "durable": True, "internal": True})
        put(api, f"/exchanges/{v}/h", {"type": "headers", "durable": True, "auto_delete": False})
        put(api, f"/queues/{v}/a", {"durable": True, "arguments": {"x-queue-type": "quorum"}})
        put(
            api,
            f"/queues/{v}/b c",
            {"durable": True, "arguments": {"x-max-length": 5, "x-queue-type": "classic"}},
        )
        put(api, f"/queues/{v}/s", {"durable": True, "arguments": {"x-queue-type": "stream"}})
        bind(api, vhost, "e/x/q/a", "odd.ü.#/ *")
        bind(api, vhost, "e/x/e/h", "to-h")
        bind(api, vhost, f"e/h/q/{seg('b c')}", "", {"x-match": "any", "k": "v"})
        put(
            api,
            f"/policies/{v}/p",
            {"pattern": "^b", "definition": {"message-ttl": 1000}, "apply-to": "queues"},
        )
        put(api, f"/operator-policies/{v}/op", {"pattern": ".*", "definition": {"max-length": 100},
                                                 "apply-to": "queues"})  # fmt: skip
        put(api, f"/vhost-limits/{v}/max-connections", {"value": 10})
        yield vhost, users
    finally:
        api.delete(f"/vhosts/{v}")
        for user in users:
            api.delete(f"/users/{user}")


def state(api, vhost: str) -> dict[str, str]:
    """The whole vhost as the broker exports it (and the permissions on it), by definition key."""
    v = seg(vhost)
    doc = api.get(f"/definitions/{v}").json()
    doc["permissions"] = api.get(f"/vhosts/{v}/permissions").json()
    doc["topic_permissions"] = api.get(f"/vhosts/{v}/topic-permissions").json()
    return keyed(doc, vhost)


@pytest.mark.parametrize("backup_of", ["vhost", "broker"])
def test_a_restore_names_what_the_broker_holds_beyond_the_backup(
    api, rabbitmq, scope, local_store, backup_of
):
    """A per-vhost backup, or the vhost of a whole-broker backup (`vhost` option: nothing else
    of the broker is imported or compared)."""
    vhost, (user, other) = scope
    v = seg(vhost)
    target = RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=[vhost] if backup_of == "vhost" else None)
    options = {} if backup_of == "vhost" else {"vhost": vhost}
    store = local_store()
    backed_up = state(api, vhost)
    manifest = backup_task.fn("rabbitmq", target, store)

    # since the backup: a queue lost, and a queue, binding, policy, exchange and permission added
    assert api.delete(f"/queues/{v}/a").status_code == 204
    put(api, f"/queues/{v}/since", {"durable": True})
    bind(api, vhost, "e/x/q/since", "since.#")
    put(api, f"/exchanges/{v}/since.x", {"type": "direct", "durable": True})
    put(
        api,
        f"/policies/{v}/since",
        {"pattern": "^since", "definition": {"max-length": 1}, "apply-to": "queues"},
    )
    put(api, f"/permissions/{v}/{other}", ALL)
    extra = sorted(set(state(api, vhost)) - set(backed_up))
    assert len(extra) == 5, extra

    report = restore_task.fn(manifest, target, store, options)
    assert report["not_in_backup"] == extra
    assert "not_in_backup" in report["note"]
    now = state(api, vhost)
    assert {k: val for k, val in now.items() if k not in extra} == backed_up  # the whole vhost

    # nothing beyond the backup: the report says the vhost is the backup's
    for path in (
        f"/queues/{v}/since",
        f"/exchanges/{v}/since.x",
        f"/policies/{v}/since",
        f"/permissions/{v}/{other}",
    ):
        assert api.delete(path).status_code == 204
    report = restore_task.fn(manifest, target, store, options)
    assert report["not_in_backup"] == []
    assert state(api, vhost) == backed_up


def test_a_restore_names_the_metadata_an_existing_vhost_keeps(api, rabbitmq, scope, local_store):
    """The import sets a vhost's description and tags only when it creates the vhost: one changed
    since the backup kept its new ones, and the restore said nothing (its check compared the live
    metadata with itself). The report names each difference in `differs_from_backup`."""
    vhost, _ = scope
    target = RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=[vhost])
    store = local_store()
    manifest = backup_task.fn("rabbitmq", target, store)
    put(api, f"/vhosts/{seg(vhost)}", {"description": "changed since", "tags": "eu,new"})

    report = restore_task.fn(manifest, target, store, {})
    assert report["differs_from_backup"] == [
        f"vhost {vhost!r}: description is 'changed since', backed up as 'exactness'",
        f"vhost {vhost!r}: tags is ['eu', 'new'], backed up as ['eu']",
    ]
    assert report["not_in_backup"] == []
    put(api, f"/vhosts/{seg(vhost)}", {"description": "exactness", "tags": "eu"})
    assert "differs_from_backup" not in restore_task.fn(manifest, target, store, {})
