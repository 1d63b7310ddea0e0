"""RabbitMQ restores: nothing that would act on production in a copy, and nothing the backup holds
silently missing afterwards. Against the machine's real broker (3.10, management API only)."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from blocks.rabbitmq import RabbitMQTarget
from tasks.components import rabbitmq as rmq
from tasks.verbs import backup_task, restore_task


def seg(name: str) -> str:
    return quote(name, safe="")


@pytest.fixture
def api(rabbitmq) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=rabbitmq.extra["url"] + "/api", auth=("guest", "guest"), timeout=30) as client:
        yield client


@pytest.fixture
def vhosts(api) -> Iterator[list[str]]:
    """Names of vhosts the test creates (on the real broker), deleted afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        api.delete(f"/vhosts/{seg(name)}")


def put(api: httpx.Client, path: str, body: dict[str, Any]) -> None:
    resp = api.put(path, json=body)
    assert resp.status_code in (201, 204), (path, resp.text)


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
    routes = {
        "/api/overview": {"rabbitmq_version": "3.10.8"},
        "/api/vhosts": [{"name": name, "description": "movers", "tags": []}],
        f"/api/vhosts/{name}": {"name": name},
        "/api/definitions": broker_doc,
        f"/api/definitions/{name}": vhost_doc,
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = routes.get(self.path)
            self.send_response(404 if body is None else 200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", name, vhost_doc
    finally:
        server.shutdown()


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
