"""The test services' own start: a free port taken before the server binds it (another xdist
worker's server took it) is tried again on other ports, from a clean directory."""

from __future__ import annotations

import secrets
import socket

import pytest

from sandbox import services


@pytest.fixture
def first_port_taken(monkeypatch):
    """The first port a starter is given is already bound; later ones are really free."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        given: list[int] = []
        real = services.free_port

        def free_port() -> int:
            given.append(busy if not given else real())
            return given[-1]

        monkeypatch.setattr(services, "free_port", free_port)
        yield busy, given


def test_postgres_starts_again_on_another_port_in_a_clean_directory(first_port_taken):
    busy, given = first_port_taken
    # the first try's initdb'd data dir must go, or initdb refuses the second ("not empty")
    svc = services.start_postgres(secrets.token_hex(8), "pg-port-" + secrets.token_hex(6))
    try:
        assert given[0] == busy and svc.port != busy
        assert services.port_open(svc.port)
    finally:
        svc.stop()


def test_pushgateway_starts_again_on_another_port(first_port_taken):
    busy, _ = first_port_taken
    svc = services.start_pushgateway()
    try:
        assert svc.port != busy and services.http_ok(f"{svc.url}/-/ready")
    finally:
        svc.stop()


def test_a_port_taken_every_time_fails_with_what_the_server_said(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        monkeypatch.setattr(services, "free_port", lambda: held.getsockname()[1])
        with pytest.raises(services.PortTaken, match="(?i)address already in use"):
            services.start_pushgateway()
