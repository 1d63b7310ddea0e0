"""Screenshots of a paused checklist restore in the Prefect UI (docs/img/), from headless Chromium.

    PREFECT_API_URL=http://127.0.0.1:4299/api PYTHONPATH=. .venv/bin/python scripts/approval_screenshots.py

Needs a running Prefect server (`prefect server start`) and `chromium`. It backs up a small
app-state twice into a temporary local store, starts `restore_with_checklist` of the older backup
with approval required, and while the run is paused takes two screenshots: the checklist artifact,
and the Resume dialog (opened by clicking "Resume" through the DevTools protocol). Then it rejects
the restore, so the run ends and nothing is changed.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.flow_runs import resume_flow_run
from websockets.sync.client import connect

from blocks.app_state import AppStateStep, AppStateTarget
from blocks.restore_guard import RestoreGuard
from blocks.store import LocalStore
from flows.backup import backup_component
from flows.recovery import restore_with_checklist

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
WIDTH, HEIGHT = 1280, 900
CLICK_RESUME = """(() => {
  const b = [...document.querySelectorAll('button')].find(x => x.textContent.trim() === 'Resume');
  if (b) { b.click(); return true } return false })()"""
# the dialog's scrolling boxes (its description, its body), innermost first
SCROLLERS = """[...document.querySelectorAll('.p-modal *')]
  .filter(e => e.scrollHeight > e.clientHeight + 4 && getComputedStyle(e).overflowY !== 'visible')"""
MODAL_WIDTHS = f"(() => {SCROLLERS}.map(e => [e.scrollWidth, e.clientWidth]))()"
SCROLL_MODAL = f"(() => {{ {SCROLLERS}.forEach(e => e.scrollTop = e.scrollHeight); return true }})()"


class Chromium:
    """One headless Chromium page, driven through the DevTools protocol."""

    def __init__(self, port: int = 9333) -> None:
        self.profile = tempfile.mkdtemp(prefix="klb-chromium-")
        self.proc = subprocess.Popen(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--remote-debugging-port={port}",
                f"--user-data-dir={self.profile}",
                f"--window-size={WIDTH},{HEIGHT}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import urllib.request

        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as resp:
                    pages = [p for p in json.load(resp) if p["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)
        self.n = 0
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                return msg.get("result", {})

    def open(self, url: str, settle: float = 6.0) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(settle)

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def shot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"wrote {path}")

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> int:
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        print("set PREFECT_API_URL to a running Prefect server's API", file=sys.stderr)
        return 2
    ui = api.removesuffix("/api")
    work = Path(tempfile.mkdtemp(prefix="klb-shots-"))
    prod = work / "sessions.json"
    prod.write_text('{"session": "alpha"}\n' * 200)
    target = AppStateTarget(
        steps=[
            AppStateStep(
                name="sessions",
                backup_command=["cat", str(prod)],
                restore_command=["sh", "-c", 'cat > "$PROD.new" && mv "$PROD.new" "$PROD"'],
                env={"PROD": str(prod)},
            )
        ]
    )
    store = LocalStore(path=str(work / "store"))
    older = backup_component("app-state", target=target, store=store)
    backup_component("app-state", target=target, store=store)
    prod.write_text('{"session": "broken"}\n')
    guard = RestoreGuard(require_approval=True, approval_timeout_seconds=900)
    result: dict = {}

    def run() -> None:
        result["state"] = restore_with_checklist(
            "app-state", backup_id=older.id, target=target, store=store, guard=guard, return_state=True
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    with get_client(sync_client=True) as client:
        while True:
            runs = [r for r in client.read_flow_runs() if r.state and r.state.is_paused()]
            if runs:
                flow_run = runs[0]
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
                key=ArtifactFilterKey(any_=["restore-checklist"]),
            )
        )
    newest = max(artifacts, key=lambda a: a.created)
    IMG.mkdir(parents=True, exist_ok=True)
    browser = Chromium()
    try:
        browser.open(f"{ui}/artifacts/artifact/{newest.id}")
        browser.shot(IMG / "checklist-artifact.png")
        browser.open(f"{ui}/runs/flow-run/{flow_run.id}")
        clicked = browser.js(CLICK_RESUME)
        if not clicked:
            print("no Resume button on the flow run page", file=sys.stderr)
        time.sleep(4)
        browser.shot(IMG / "approval-form.png")
        print("dialog scrollWidth/clientWidth:", browser.js(MODAL_WIDTHS))
        browser.js(SCROLL_MODAL)
        time.sleep(1)
        browser.shot(IMG / "approval-form-fields.png")
    finally:
        browser.close()
    resume_flow_run(flow_run.id, run_input={"decision": "reject", "by": "docs", "reason": "screenshots only"})
    thread.join(timeout=60)
    print("run ended:", result.get("state"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
