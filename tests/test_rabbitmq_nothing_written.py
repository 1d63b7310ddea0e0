"""A RabbitMQ restore that imports definitions identical to what the broker holds writes nothing,
yet it was recorded `restored` (target changed) and could be rolled back; and the rollback of a
vhost restore re-imported the safety backup's whole vhost (and every permission on it), over
definitions the restore never touched, undoing writes made to them since. The restore now
reports what its import created and overwrote (the broker's definitions before and after), and
its rollback puts back exactly what it overwrote, or is refused. The machine's RabbitMQ, a real
Prefect server."""

from __future__ import annotations

import secrets

import pytest

from blocks.rabbitmq import RabbitMQTarget
from tests.rabbitmq_helpers import ALL, put, seg

pytestmark = pytest.mark.usefixtures("prefect_server")


def limits(api, vhost: str) -> dict:
    return {k: v for i in api.get(f"/vhost-limits/{seg(vhost)}").json() for k, v in i["value"].items()}


def perms(api, vhost: str, user: str) -> dict:
    live = api.get(f"/permissions/{seg(vhost)}/{seg(user)}").json()
    return {k: live[k] for k in ("configure", "write", "read")}


@pytest.fixture
def broker(api, rabbitmq):
    """A vhost with a queue bound to an exchange, a connection limit, and two users allowed on it."""
    tag = secrets.token_hex(4)
    vhost, users = f"klb-nw-{tag}", [f"klb-nw-a-{tag}", f"klb-nw-b-{tag}"]
    put(api, f"/vhosts/{vhost}", {"description": "nothing written"})
    v = seg(vhost)
    put(api, f"/exchanges/{v}/orders", {"type": "direct", "durable": True})
    put(api, f"/queues/{v}/orders.q", {"durable": True})
    assert api.post(f"/bindings/{v}/e/orders/q/orders.q", json={"routing_key": "o"}).status_code == 201
    put(api, f"/vhost-limits/{v}/max-connections", {"value": 10})
    for user in users:
        put(api, f"/users/{user}", {"password": secrets.token_hex(8), "tags": ""})
        put(api, f"/permissions/{v}/{user}", ALL)
    yield vhost, users
    api.delete(f"/vhosts/{v}")
    for user in users:
        api.delete(f"/users/{seg(user)}")


def _backup(target, local_store):
    from flows.backup import backup_component

    store = local_store()
    return store, backup_component("rabbitmq", target=target, store=store)


@pytest.mark.parametrize("scope", ["vhost backup", "one vhost of a broker backup"])
def test_a_restore_of_definitions_the_broker_holds_says_it_restored_nothing(
    api, rabbitmq, broker, local_store, scope
):
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
    from tasks.errors import BadInput

    vhost, (user, _) = broker
    url = rabbitmq.extra["url"]
    if scope == "vhost backup":
        target, options = RabbitMQTarget(url=url, vhosts=[vhost]), {}
    else:
        target, options = RabbitMQTarget(url=url), {"vhost": vhost}
    store, backup = _backup(target, local_store)
    record = restore_with_checklist(
        "rabbitmq", backup_id=backup.id, target=target, store=store, options=options
    )

    assert record.status == "nothing restored" and record.target_changed is False, record.report
    assert record.report["created"] == [] and record.report["overwritten"] == []
    assert "wrote nothing" in record.report["note"]
    # a write made since to what the restore left as it was survives the refused rollback
    put(api, f"/vhost-limits/{seg(vhost)}/max-connections", {"value": 50})
    put(api, f"/permissions/{seg(vhost)}/{seg(user)}", {"configure": "^x$", "write": ".*", "read": ".*"})
    with pytest.raises(BadInput, match="wrote nothing"):
        rollback_restore(record.id, target=target, store=store)
    assert limits(api, vhost) == {"max-connections": 50}
    assert perms(api, vhost, user)["configure"] == "^x$"
    assert load_restore_record(store, record.id).status == "nothing restored"


def test_a_restore_that_only_created_definitions_is_not_rolled_back_over_later_writes(
    api, rabbitmq, broker, local_store
):
    """The queue was deleted since the backup: the restore created it (and its binding) and left
    the vhost's limit as it was. Its rollback re-imported the safety backup's vhost, putting the
    limit from before the restore over the one set since."""
    from flows.recovery import restore_with_checklist, rollback_restore
    from tasks.errors import BadInput

    vhost, _ = broker
    target = RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=[vhost])
    store, backup = _backup(target, local_store)
    assert api.delete(f"/queues/{seg(vhost)}/orders.q").status_code == 204
    record = restore_with_checklist("rabbitmq", backup_id=backup.id, target=target, store=store)

    assert record.status == "restored" and record.target_changed is True
    assert record.report["overwritten"] == []
    assert f"queue 'orders.q' in vhost {vhost!r}" in record.report["created"]
    assert any(k.startswith("binding ") for k in record.report["created"]), record.report["created"]
    put(api, f"/vhost-limits/{seg(vhost)}/max-connections", {"value": 50})  # since the restore
    with pytest.raises(BadInput, match="overwrote nothing") as refused:
        rollback_restore(record.id, target=target, store=store)
    assert "orders.q" in str(refused.value)  # named: delete it by hand if it is not wanted
    assert limits(api, vhost) == {"max-connections": 50}


def test_a_rollback_puts_back_only_what_the_restore_overwrote(api, rabbitmq, broker, local_store):
    """One vhost of a broker backup: user a's permissions changed since the backup (the restore
    overwrites them), user b's did not (the restore leaves them). Written since the restore: b's
    permissions. The rollback put back every permission on the vhost from the safety backup, b's
    too; now a's only, and it names what the restore created (left in place)."""
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore

    vhost, (a, b) = broker
    target = RabbitMQTarget(url=rabbitmq.extra["url"])
    store, backup = _backup(target, local_store)
    before_restore = {"configure": "^a$", "write": ".*", "read": ".*"}
    put(api, f"/permissions/{seg(vhost)}/{seg(a)}", before_restore)
    assert api.delete(f"/queues/{seg(vhost)}/orders.q").status_code == 204
    record = restore_with_checklist(
        "rabbitmq", backup_id=backup.id, target=target, store=store, options={"vhost": vhost}
    )
    assert record.status == "restored"
    assert record.report["overwritten"] == [f"permissions of user {a!r} on vhost {vhost!r}"]
    assert f"queue 'orders.q' in vhost {vhost!r}" in record.report["created"]
    assert perms(api, vhost, a) == ALL

    since = {"configure": "^b$", "write": "^b$", "read": ".*"}
    put(api, f"/permissions/{seg(vhost)}/{seg(b)}", since)  # b: never touched by the restore
    put(api, f"/vhost-limits/{seg(vhost)}/max-connections", {"value": 50})
    rollback_restore(record.id, target=target, store=store)

    assert perms(api, vhost, a) == before_restore  # what the restore overwrote: put back
    assert perms(api, vhost, b) == since  # a write made since to what it left: kept
    assert limits(api, vhost) == {"max-connections": 50}
    original = load_restore_record(store, record.id)
    assert original.status == "rolled back"
    rollback = load_restore_record(store, original.rolled_back_by)
    assert rollback.options["only"] == [f"permissions of user {a!r} on vhost {vhost!r}"]
    assert f"queue 'orders.q' in vhost {vhost!r}" in rollback.left_in_place
    assert api.get(f"/queues/{seg(vhost)}/orders.q").status_code == 200  # left: the operator's call


def test_a_rollback_of_an_overwritten_queue_is_refused_naming_it():
    """An import never replaces a queue, exchange or vhost metadata that exists: a rollback that
    would have to is refused before anything, saying what to put back by hand."""
    from tasks.components.rabbitmq.written import refuse_unsafe_rollback
    from tasks.errors import BadInput

    with pytest.raises(BadInput, match="by hand") as refused:
        refuse_unsafe_rollback(
            ["queue 'q' in vhost 'v'", "parameter vhost-limits 'limits' in vhost 'v'"], "s1"
        )
    assert "queue 'q'" in str(refused.value) and "s1" in str(refused.value)


def test_only_names_the_backup_lacks_or_a_vhost_deleted_since_are_refused_before_anything(
    api, rabbitmq, broker, local_store
):
    from tasks.errors import BadInput
    from tasks.verbs import backup_task, restore_task

    vhost, _ = broker
    target = RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=[vhost])
    store = local_store()
    backup = backup_task.fn("rabbitmq", target, store)
    put(api, f"/vhost-limits/{seg(vhost)}/max-connections", {"value": 50})
    with pytest.raises(BadInput, match="does not hold") as refused:
        restore_task.fn(backup, target, store, {"only": [f"queue 'nope' in vhost {vhost!r}"]})
    assert getattr(refused.value, "target_untouched", False)
    assert limits(api, vhost) == {"max-connections": 50}

    limit = f"parameter vhost-limits 'limits' in vhost {vhost!r}"
    report = restore_task.fn(backup, target, store, {"only": [limit]})
    assert report["overwritten"] == [limit] and report["created"] == []
    assert limits(api, vhost) == {"max-connections": 10}
    assert api.delete(f"/vhosts/{seg(vhost)}").status_code == 204
    with pytest.raises(BadInput, match="deleted since") as refused:
        restore_task.fn(backup, target, store, {"only": [limit]})
    assert getattr(refused.value, "target_untouched", False)
    assert vhost not in [v["name"] for v in api.get("/vhosts").json()]


def tags(api, user: str) -> list[str]:
    return sorted(api.get(f"/users/{seg(user)}").json()["tags"])


@pytest.mark.broker_wide  # whole-broker restores, of every vhost and user (other tests' included)
def test_a_whole_broker_restore_reports_the_users_it_overwrote_and_its_rollback_only_those(
    api, rabbitmq, broker, local_store
):
    """An import of the broker's own definitions writes nothing: `nothing restored`. One that
    overwrote user a (its tags changed since the backup) is rolled back by putting back user a
    only: user b, whose tags were changed after the restore, keeps them."""
    from pydantic import SecretStr

    from flows.backup import backup_component
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore

    _, (a, b) = broker
    target = RabbitMQTarget(url=rabbitmq.extra["url"])
    store = local_store(encryption_key=SecretStr("rmq-key"))
    backup = backup_component("rabbitmq", target=target, store=store)
    same = restore_with_checklist("rabbitmq", backup_id=backup.id, target=target, store=store)
    assert same.status == "nothing restored", (same.report["created"], same.report["overwritten"])

    put(api, f"/users/{seg(a)}", {"password_hash": "", "tags": "monitoring"})  # since the backup
    hash_a = api.get(f"/users/{seg(a)}").json()["password_hash"]
    record = restore_with_checklist("rabbitmq", backup_id=backup.id, target=target, store=store)
    assert record.status == "restored"
    assert record.report["overwritten"] == [f"user {a!r}"] and record.report["created"] == []
    assert tags(api, a) == []
    put(api, f"/users/{seg(b)}", {"password_hash": "", "tags": "management"})  # since the restore

    rollback_restore(record.id, target=target, store=store)
    assert tags(api, a) == ["monitoring"] and api.get(f"/users/{seg(a)}").json()["password_hash"] == hash_a
    assert tags(api, b) == ["management"]
    rollback = load_restore_record(store, load_restore_record(store, record.id).rolled_back_by)
    # the safety backup is this broker's own: its shovels and federation, if overwritten, go back too
    assert rollback.options == {"only": [f"user {a!r}"], "import_message_movers": True}


def test_a_restore_that_failed_after_its_import_records_what_it_wrote(api, rabbitmq, local_store):
    """An import that drops a binding without a word (RabbitMQ 3.10 does so for one whose queue
    does not exist: such a backup is now refused before anything; here the import drops it), so
    the check after the import fails. The failed restore's record now holds what the import wrote
    (it created queue a), and its rollback is refused: it overwrote nothing, and putting the
    safety backup back would only undo writes made since."""
    from flows.backup import backup_component
    from flows.recovery import load_restore_record, restore_with_checklist, rollback_restore
    from tasks.errors import BadInput, IntegrityError
    from tests.rabbitmq_helpers import lossy, serve

    name = f"klb-nw-f-{secrets.token_hex(4)}"
    vhost_doc = {
        "queues": [{"name": "a", "durable": True, "auto_delete": False, "arguments": {}}],
        "bindings": [
            {"source": "amq.direct", "destination": "a", "destination_type": "queue",
             "routing_key": "k", "arguments": {}},
        ],
        "exchanges": [], "policies": [], "parameters": [],
    }  # fmt: skip
    put(api, f"/vhosts/{name}", {"description": ""})
    put(api, f"/vhost-limits/{seg(name)}/max-connections", {"value": 10})
    store = local_store()
    try:
        with serve(name, {"vhosts": [{"name": name}]}, vhost_doc) as url:
            backup = backup_component("rabbitmq", target=RabbitMQTarget(url=url, vhosts=[name]), store=store)
        target = RabbitMQTarget(url=rabbitmq.extra["url"], vhosts=[name])
        with lossy("bindings"), pytest.raises(IntegrityError, match="binding.*missing"):
            restore_with_checklist("rabbitmq", backup_id=backup.id, target=target, store=store)
        (record_id,) = [r for r in _restore_ids(store) if r.startswith("restore-")]
        record = load_restore_record(store, record_id)
        assert record.status == "failed"
        assert record.report == {"created": [f"queue 'a' in vhost {name!r}"], "overwritten": []}
        put(api, f"/vhost-limits/{seg(name)}/max-connections", {"value": 50})  # since the restore
        with pytest.raises(BadInput, match="overwrote nothing"):
            rollback_restore(record.id, target=target, store=store)
        assert limits(api, name) == {"max-connections": 50}
    finally:
        api.delete(f"/vhosts/{seg(name)}")


def _restore_ids(store) -> list[str]:
    from tasks.storage.layout import RESTORE_RECORD, RESTORES
    from tasks.storage.records import iter_records

    return [key.rsplit("/", 2)[-2] for key, _ in iter_records(store, RESTORES, "/" + RESTORE_RECORD)]


def test_a_rollback_asked_while_the_restore_ran_puts_back_only_what_it_overwrote(
    api, rabbitmq, broker, local_store, monkeypatch
):
    """Before: a rollback decided what to put back before it took the component lock. Asked while
    the restore ran (its record 'running', no report yet: what it overwrote unknown), it chose the
    safety backup's whole vhost, waited for the restore to end, and re-imported that vhost over
    user b's permissions, which the restore never touched and which were changed after it; and it
    did not list the queue the restore created. Everything it decides is decided under the lock."""
    import threading
    from contextlib import contextmanager

    import flows.recovery as recovery
    from flows.recovery import load_restore_record, rollback_restore
    from tasks.storage.backends import backend_for
    from tasks.storage.layout import layout
    from tests.drill.test_approval import Running

    vhost, (a, b) = broker
    target = RabbitMQTarget(url=rabbitmq.extra["url"])
    store, backup = _backup(target, local_store)
    before_restore = {"configure": "^a$", "write": ".*", "read": ".*"}
    put(api, f"/permissions/{seg(vhost)}/{seg(a)}", before_restore)
    assert api.delete(f"/queues/{seg(vhost)}/orders.q").status_code == 204
    since = {"configure": "^b$", "write": "^b$", "read": ".*"}
    imported, go, rollback_at_lock = threading.Event(), threading.Event(), threading.Event()
    real_restore, real_lock, locks = recovery.restore_task, recovery.component_lock, []

    def restore_then_wait(*args, **kwargs):  # the restore's import, a write made after it, a pause
        report = real_restore(*args, **kwargs)
        if not imported.is_set():
            put(api, f"/permissions/{seg(vhost)}/{seg(b)}", since)
            imported.set()
            assert go.wait(120)
        return report

    @contextmanager
    def lock(component, *args, **kwargs):
        locks.append(component)
        if len(locks) == 2:  # the rollback: it has read the record and waits for the restore to end
            rollback_at_lock.set()
        with real_lock(component, *args, **kwargs):
            yield

    monkeypatch.setattr(recovery, "restore_task", restore_then_wait)
    monkeypatch.setattr(recovery, "component_lock", lock)
    restore = Running(
        component="rabbitmq", backup_id=backup.id, target=target, store=store, options={"vhost": vhost}
    )
    assert imported.wait(120)
    keys = backend_for(store).list_keys(layout(store).records_dir("restores"))
    (restore_id,) = {k.rsplit("/", 2)[-2] for k in keys if k.endswith("/record.json")}
    assert load_restore_record(store, restore_id).status == "running"
    rollback = Running(flow=rollback_restore, restore_id=restore_id, target=target, store=store)
    assert rollback_at_lock.wait(120)
    go.set()
    record = restore.wait().result()
    assert record.report["overwritten"] == [f"permissions of user {a!r} on vhost {vhost!r}"]

    original = rollback.wait().result()
    assert perms(api, vhost, a) == before_restore  # what the restore overwrote: put back
    assert perms(api, vhost, b) == since  # a write made since to what it left: kept
    done = load_restore_record(store, original.rolled_back_by)
    assert done.options["only"] == [f"permissions of user {a!r} on vhost {vhost!r}"]
    assert f"queue 'orders.q' in vhost {vhost!r}" in done.left_in_place
