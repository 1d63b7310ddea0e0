"""Escalation: P0/P1/P2 routed to real Prefect notification blocks (a generic webhook posting to
a local HTTP server), and the automations created idempotently on the Prefect server."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.automations import Automation
from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook

from blocks.monitoring import NotificationRouting
from tasks.errors import ConfigurationError
from tasks.notify import Severity, notify


@pytest.fixture
def hook_server():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "json": json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()


def webhook(url: str, path: str) -> str:
    name = "klb-" + path + "-" + secrets.token_hex(3)
    CustomWebhookNotificationBlock(
        name=name,
        url=f"{url}/{path}",
        json_data={"text": "{{subject}}|{{body}}"},
        allow_private_urls=True,
    ).save(name)
    return f"custom-webhook/{name}"


@pytest.fixture
def routing(prefect_server, hook_server):
    url, received = hook_server
    slack = "slack-" + secrets.token_hex(3)
    SlackWebhook(url="https://hooks.slack.com/services/T000/B000/XXXX").save(slack)
    cfg = NotificationRouting(
        p0=[webhook(url, "oncall")],
        p1=[webhook(url, "platform"), webhook(url, "tickets")],
        p2=[f"slack-webhook/{slack}"],
        work_pool="klb-k8s",
    )
    name = "routing-" + secrets.token_hex(3)
    cfg.save(name)
    return name, received


def test_each_severity_reaches_only_its_blocks(routing):
    name, received = routing
    assert len(notify(Severity.P1, "backup of postgres failed", "pg_dump: disk full", routing=name)) == 2
    assert sorted(r["path"] for r in received) == ["/platform", "/tickets"]
    assert all(r["json"]["text"] == "[P1] backup of postgres failed|pg_dump: disk full" for r in received)
    received.clear()
    assert len(notify(Severity.P0, "backup system down", "no worker", routing=name)) == 1
    assert [r["path"] for r in received] == ["/oncall"]


def test_a_broken_notifier_does_not_stop_the_others(prefect_server, hook_server):
    url, received = hook_server
    cfg = NotificationRouting(p1=["custom-webhook/does-not-exist", webhook(url, "platform")])
    assert notify(Severity.P1, "x", "y", routing=cfg) == [cfg.p1[1]]
    assert [r["path"] for r in received] == ["/platform"]


def test_automations_are_created_once_and_updated_in_place(routing):
    from scripts.create_automations import FLOWS, apply, main

    name, _ = routing
    first = apply(name)
    assert first == {
        "klb-p0-flow-crashed": "created",
        "klb-p1-flow-failed": "created",
        "klb-p2-flow-late": "created",
        "klb-p0-work-pool-not-ready": "created",
    }
    assert main(["--routing", name]) == 0  # again: updates, no duplicates
    assert set(apply(name).values()) == {"updated"}
    for auto_name, event, n_actions in (
        ("klb-p1-flow-failed", "prefect.flow-run.Failed", 2),
        ("klb-p0-flow-crashed", "prefect.flow-run.Crashed", 1),
        ("klb-p2-flow-late", "prefect.flow-run.Late", 1),
    ):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            found = client.read_automations_by_name(auto_name)
        assert len(found) == 1
        automation = found[0]
        assert automation.trigger.expect == {event}
        assert set(automation.trigger.match_related["prefect.resource.name"]) == set(FLOWS)
        assert len(automation.actions) == n_actions
        assert all(a.type == "send-notification" for a in automation.actions)
    pool = Automation.read(name="klb-p0-work-pool-not-ready")
    assert pool.trigger.expect == {"prefect.work-pool.not-ready"}


def test_no_routing_is_a_clear_error(prefect_server, monkeypatch, capsys):
    from scripts.create_automations import main

    monkeypatch.delenv("KLB_NOTIFY_ROUTING", raising=False)
    assert main([]) == 2
    assert "klb-notification-routing" in capsys.readouterr().err
    with pytest.raises(ConfigurationError, match="no notification routing block"):
        from tasks.notify import load_routing

        load_routing("nope-" + secrets.token_hex(3))


def test_a_failed_run_alerts_through_the_server_not_the_process(routing):
    """The automation (server side) sends the P1 notification for a Failed run; the flow has no
    in-process hook at all."""
    import time

    from prefect import flow

    from scripts.create_automations import apply

    name, received = routing
    apply(name)
    received.clear()

    @flow(name="verify-backups")  # one of our flow names; nothing in-process notifies
    def failing():
        raise RuntimeError("sha256 mismatch in the DR copy")

    failing(return_state=True)
    # P1 goes to both routes; they arrive in either order, so wait for the pair, not the first.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len({r["path"] for r in received}) < 2:
        time.sleep(0.5)
    assert sorted({r["path"] for r in received}) == ["/platform", "/tickets"], received
    assert any("verify-backups" in r["json"]["text"] and "Failed" in r["json"]["text"] for r in received)
