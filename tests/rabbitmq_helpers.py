"""The RabbitMQ tests' helpers (their `api` fixture, the broker's management API, is in
tests/conftest.py): a stand-in for a source broker's management API, for tests whose backup
must read what a broker with other plugins or versions exports (the machine's broker cannot hold
it); and a broker whose import drops a kind of definition without a word."""

from __future__ import annotations

import fcntl
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from blocks.rabbitmq import RabbitMQTarget
from tasks.components import rabbitmq as rmq

ALL = {"configure": ".*", "write": ".*", "read": ".*"}  # every permission, as a vhost's owner has
# The broker is the machine's: every checkout's test run on it (xdist workers, worktrees, a fresh
# clone) takes this one file. Not $TMPDIR: that is per worker here.
BROKER_LOCK = Path("/tmp/knative-lambda-backup-rabbitmq-tests.lock")


@contextmanager
def broker_lock(exclusive: bool) -> Iterator[None]:
    """Work on the machine's broker: shared (in vhosts of one's own, side by side with others) or
    exclusive (a whole-broker restore brings back every vhost it backed up, so no other test may
    make or drop one meanwhile). Whoever holds a vhost across tests holds the shared lock as long."""
    with open(BROKER_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)  # released on close
        yield


def seg(name: str) -> str:
    """A name as one segment of a management API path."""
    return quote(name, safe="")


def put(api: httpx.Client, path: str, body: dict[str, Any]) -> None:
    resp = api.put(path, json=body)
    assert resp.status_code in (201, 204), (path, resp.text)


@contextmanager
def serve(
    name: str, broker_doc: dict[str, Any], vhost_doc: dict[str, Any], cluster_id: str | None = None
) -> Iterator[str]:
    """A management API on loopback that serves what a source broker with vhost `name` exports;
    `cluster_id` its internal_cluster_id (None: a broker whose id a backup cannot read)."""
    routes = {
        "/api/overview": {"rabbitmq_version": "3.10.8", "cluster_name": "rabbit@source"},
        **(
            {
                "/api/global-parameters/internal_cluster_id": {
                    "name": "internal_cluster_id",
                    "value": cluster_id,
                }
            }
            if cluster_id
            else {}
        ),
        "/api/vhosts": [{"name": name, "description": "", "tags": []}],
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
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@contextmanager
def lossy(drop: str) -> Iterator[None]:
    """The broker's definitions import drops every `drop` item of what it is given, and says
    nothing (as an import that ignores what it does not handle would)."""
    real = rmq.connect

    class Client:
        def __init__(self, inner: httpx.Client) -> None:
            self._inner = inner

        def __getattr__(self, attr: str) -> Any:
            return getattr(self._inner, attr)

        def post(self, path: str, content: str | None = None, **kwargs: Any) -> httpx.Response:
            if path.startswith("/definitions") and content is not None:
                content = json.dumps({**json.loads(content), drop: []})
            return self._inner.post(path, content=content, **kwargs)

    @contextmanager
    def connect(target: RabbitMQTarget) -> Iterator[Any]:
        with real(target) as client:
            yield Client(client)

    rmq.connect = connect  # type: ignore[assignment]
    try:
        yield
    finally:
        rmq.connect = real  # type: ignore[assignment]
