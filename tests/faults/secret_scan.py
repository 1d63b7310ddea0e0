"""Search every place a secret could leak to for known secret values. Reusable: a component's
test adds its own secrets (a DB or RabbitMQ password) and calls the same scans.

    scan = SecretScan({"s3 secret key": s3_secret, "db password": pg_password})
    scan.proc_argv()                  # while the engine runs
    ...run flows...
    scan.text("error message", str(exc)); scan.logs(caplog.text); scan.store(store); scan.prefect()
    scan.assert_clean(require=("argv", "log", "prefect-log", "artifact", "result", "manifest"))
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tasks.storage.backends import backend_for

# every place a secret could surface; a scan that covered fewer proves less
EVERY_PLACE = (
    "argv", "log", "prefect-log", "artifact", "flow-run", "task-run",
    "result", "manifest", "object", "error message",
)  # fmt: skip


class SecretScan:
    def __init__(self, secrets: dict[str, str]) -> None:
        short = [name for name, value in secrets.items() if len(value) < 12]
        assert not short, f"secrets must be long and unique to scan for: {short}"
        self.secrets = secrets
        self.findings: list[str] = []
        self.scanned: Counter[str] = Counter()

    def text(self, kind: str, text: str | bytes, where: str = "") -> None:
        data = text if isinstance(text, bytes) else text.encode(errors="replace")
        self.scanned[kind] += 1
        for name, value in self.secrets.items():
            if value.encode() in data:
                self.findings.append(f"{name} found in {kind} {where}".strip())

    def logs(self, text: str) -> None:
        self.text("log", text, "(python logging)")

    def proc_argv(self) -> set[int]:
        """The argv of every process on the machine, now. Returns the pids seen."""
        pids = set()
        for path in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = path.read_bytes()
            except OSError:
                continue  # the process ended
            pids.add(int(path.parent.name))
            self.text("argv", argv, f"of pid {path.parent.name}")
        return pids

    def store(self, store) -> None:
        """Every object of the store: data, manifests, Prefect results (key names too)."""
        backend = backend_for(store)
        for key in backend.list_keys(store.prefix):
            kind = "manifest" if key.endswith("manifest.json") else "object"
            kind = "result" if "/_prefect-results/" in key else kind
            self.text(kind, key.encode() + b"\n" + backend.get_bytes(key), key)

    def prefect(self) -> None:
        """Everything the Prefect API holds: logs, artifacts, flow/task runs (parameters, state
        messages), block documents as read without include_secrets."""
        from prefect.client.orchestration import get_client
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        with get_client(sync_client=True) as client:
            for log in all_pages(client.read_logs):
                self.text("prefect-log", log.message, f"(flow run {log.flow_run_id})")
            for artifact in all_pages(client.read_artifacts):
                self.text(
                    "artifact", f"{artifact.key} {artifact.description} {artifact.data}", artifact.key or ""
                )
            for run in all_pages(client.read_flow_runs):
                self.text("flow-run", run.model_dump_json(), run.name)
            for run in all_pages(client.read_task_runs):
                self.text("task-run", run.model_dump_json(), run.name)
            # blocks are where Prefect keeps secrets by design (the result-storage block holds the
            # S3 credentials): they must come back obfuscated unless secrets are asked for
            for doc in all_pages(lambda **kw: client.read_block_documents(include_secrets=False, **kw)):
                self.text("block", doc.model_dump_json(), doc.name or "")

    def assert_clean(self, require: tuple[str, ...] = ()) -> None:
        missing = [kind for kind in require if not self.scanned[kind]]
        assert not missing, f"nothing was scanned in: {missing} (scanned: {dict(self.scanned)})"
        assert not self.findings, "secrets leaked:\n" + "\n".join(self.findings)


def all_pages(read, page: int = 200):
    """Every row a paged Prefect client read returns (one page is 200 at most)."""
    offset = 0
    while True:
        batch = read(limit=page, offset=offset)
        yield from batch
        if len(batch) < page:
            return
        offset += page
