"""An HTTP proxy on loopback in front of the session's moto server that injects S3 faults.

Tests point an S3 store's endpoint_url at `proxy.url` and add rules:

    proxy.add(Rule(method="PUT", query="partNumber", action="error", status=503, code="SlowDown"))
    proxy.add(Rule(method="GET", action="drop_response", times=2))      # cut the body mid-way
    proxy.add(Rule(auth="AKIAWRONG", action="error", status=403, code="InvalidAccessKeyId", times=None))
    proxy.add(Rule(method="HEAD", action="strip_checksums", times=None))  # a server keeping none
    proxy.stop(); ...; proxy.start()                                    # the server dies, comes back

A rule matches on method, a regex over the path, a substring of the query, a substring of the
Authorization header; it lets `skip` matching requests through, then fires `times` times
(None: forever). Every request is logged in `proxy.log` as (method, path?query, what happened [range=...]).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

Action = Literal["error", "delay", "drop_request", "drop_response", "strip_checksums"]
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te"}


@dataclass
class Rule:
    action: Action
    method: str | None = None
    path: str = ".*"
    query: str | None = None
    auth: str | None = None
    status: int = 500
    code: str = "InternalError"
    delay: float = 0.0
    times: int | None = 1
    skip: int = 0
    on_fire: Callable[[], None] | None = None  # run in the proxy as the fault fires
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def matches(self, method: str, path: str, query: str, auth: str) -> bool:
        return (
            (self.method is None or self.method == method)
            and re.search(self.path, path) is not None
            and (self.query is None or self.query in query)
            and (self.auth is None or self.auth in auth)
        )

    def claim(self) -> bool:
        """Count a matching request; True when this one gets the fault."""
        self.seen += 1
        if self.seen <= self.skip or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


def error_xml(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
    ).encode()


class S3FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- control from the test -------------------------------------------------------------
    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def requests(self, method: str | None = None, contains: str = "") -> list[tuple[str, str, str]]:
        return [e for e in list(self.log) if (method is None or e[0] == method) and contains in e[1]]

    def start(self) -> S3FaultProxy:
        """Listen (again, on the same port after a stop)."""
        handler = type("Handler", (_Handler,), {"proxy": self})
        server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        server.daemon_threads = True
        server.allow_reuse_address = True
        self._server, self.port = server, server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """The server dies: stop listening and cut every open connection mid-request."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # --- used by the handler ---------------------------------------------------------------
    def pick(self, method: str, path: str, query: str, auth: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, query, auth) and rule.claim():
                    return rule
        return None


class _Handler(BaseHTTPRequestHandler):
    proxy: S3FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.proxy._lock:
            self.proxy._conns.add(self.connection)

    def finish(self) -> None:
        with self.proxy._lock:
            self.proxy._conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _read_body(self, limit: int | None = None) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
                if limit is not None and len(body) >= limit:
                    return bytes(body)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length if limit is None else min(limit, length))

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _handle(self) -> None:
        method = self.command
        path, _, query = self.path.partition("?")
        rule = self.proxy.pick(method, path, query, self.headers.get("Authorization", ""))
        what = rule.action if rule else "forwarded"
        if self.headers.get("Range"):
            what += f" range={self.headers['Range']}"
        self.proxy.log.append((method, self.path, what))
        if rule and rule.on_fire and rule.action != "drop_response":
            rule.on_fire()
        if rule and rule.action == "drop_request":
            length = int(self.headers.get("Content-Length") or 0)
            self._read_body(limit=length // 2)
            return self._drop()
        body = self._read_body()
        if rule and rule.action == "error":
            payload = error_xml(rule.code, f"injected by the fault proxy ({rule.status})")
            self.send_response(rule.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return None
        if rule and rule.action == "delay":
            time.sleep(rule.delay)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection("127.0.0.1", self.proxy.upstream_port, timeout=60)
        try:
            upstream.request(
                method, self.path, body=body if body or method in ("PUT", "POST") else None, headers=headers
            )
            resp = upstream.getresponse()
            data = resp.read()
        finally:
            upstream.close()
        self.send_response_only(resp.status, resp.reason)
        strip = rule is not None and rule.action == "strip_checksums"
        for key, value in resp.getheaders():
            if strip and key.lower().startswith("x-amz-checksum"):
                continue
            if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                self.send_header(key, value)
        # a HEAD answer has no body: its Content-Length is the object's size, as S3 said
        head_length = resp.getheader("Content-Length") if method == "HEAD" else None
        self.send_header("Content-Length", head_length or str(len(data)))
        self.end_headers()
        if method == "HEAD":
            return None
        if rule and rule.action == "drop_response" and len(data) > 1:
            if rule.on_fire:  # after S3 answered: e.g. change the object under a running download
                rule.on_fire()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            return self._drop()
        self.wfile.write(data)
        return None

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815
