"""A notification block's secret (a token templated into its webhook URL) never reaches a
checklist line, the restore record, the checklist artifact or a log line when the webhook
fails. Found by an adversarial review: httpx puts the whole URL in its error, and both the
checklist and the escalation logged that error as it was."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from blocks.monitoring import NotificationRouting
from blocks.restore_guard import RestoreGuard
from flows.backup import backup_component
from flows.recovery import restore_with_checklist
from tasks.notify import Severity, notify
from tasks.storage.backends import backend_for
from tests.drill.conftest import Prod

pytestmark = pytest.mark.usefixtures("prefect_server")


class NotFoundHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the stdlib's name
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def failing_webhook() -> Iterator[tuple[str, str]]:
    """('custom-webhook/<name>', its secret token): a webhook that answers 404."""
    server = HTTPServer(("127.0.0.1", 0), NotFoundHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token, name = "tok" + secrets.token_hex(16), "failing-hook-" + secrets.token_hex(3)
    CustomWebhookNotificationBlock(
        name="oncall",
        url=f"http://127.0.0.1:{server.server_port}/h/{{{{token}}}}",
        secrets={"token": token},
        allow_private_urls=True,
    ).save(name)
    yield f"custom-webhook/{name}", token
    server.shutdown()


def test_a_failing_webhooks_secret_is_not_in_the_checklist_record_or_artifact(
    local_store, tmp_path, failing_webhook, caplog
):
    ref, token = failing_webhook
    store, target = local_store(), Prod(tmp_path / "prod").target()
    backup_component("app-state", target=target, store=store)
    record = restore_with_checklist("app-state", target=target, store=store, guard=RestoreGuard(notify=[ref]))
    line = next(line for line in record.checklist if line.item == "notify stakeholders")
    assert line.mark == "warn" and "HTTP 404" in line.detail
    assert token not in record.model_dump_json()
    backend = backend_for(store)
    assert not [k for k in backend.list_keys(store.prefix) if token.encode() in backend.get_bytes(k)]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["restore-checklist"]))
        )
    assert artifacts and not [a for a in artifacts if token in (a.data or "")]
    assert not [r for r in caplog.records if token in r.getMessage()]


def test_a_failing_webhooks_secret_is_not_in_the_escalation_log(failing_webhook, caplog):
    ref, token = failing_webhook
    assert notify(Severity.P1, "restore failed", "body", routing=NotificationRouting(p1=[ref])) == []
    lines = [r.getMessage() for r in caplog.records if "could not notify" in r.getMessage()]
    assert lines and "HTTP 404" in lines[0] and not [m for m in lines if token in m]
