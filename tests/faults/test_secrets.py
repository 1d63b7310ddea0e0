"""Known secrets through the main flows: none may appear in argv, logs, artifacts, results,
manifests, Prefect's records or error messages.

SECRET_RUNS is the table of flow runs to make with secrets in play; a component adds a row
(e.g. a postgres backup whose target block holds the DB password) and its secret to `secrets`.
"""

from __future__ import annotations

import logging
import sys
import threading

import pytest
from pydantic import SecretStr

from blocks.app_state import AppStateStep, AppStateTarget
from flows.backup import backup_component
from flows.maintenance import verify_backups
from flows.restore import restore_component
from tests.faults.helpers import make_s3_store, pid_of, random_secret, restorer_argv, streamer_argv
from tests.faults.secret_scan import EVERY_PLACE, SecretScan

# a step that uses its secret env var and echoes it on stderr, the way engines print failing
# connection strings; exit status from argv[1]
LEAKY = """
import os, sys
print("connecting with seed=" + os.environ["APP_SIGNING_SEED"] + " key=" + os.environ["API_KEY"],
      file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.fault(
    "secrets",
    "backup (with the engine printing its secrets on stderr), a failing backup, verify and restore "
    "with a known S3 secret key, encryption key and two secret_env values of an app-state step",
    "no secret in any process argv (read while the engine runs), python or Prefect log, artifact, "
    "flow/task run record, block document, stored object, manifest, persisted result or error message",
)
def test_no_secret_leaks_anywhere(prefect_server, moto, s3_bucket, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = {
        "S3 secret key": random_secret("s3secret"),
        "encryption key": random_secret("enckey"),
        "step secret (unremarkable env name)": random_secret("seed"),
        "step secret (API_KEY)": random_secret("apikey"),
    }
    scan = SecretScan(secrets)
    bucket, _ = s3_bucket
    store = make_s3_store(
        moto.url, bucket, secret=secrets["S3 secret key"], encryption_key=SecretStr(secrets["encryption key"])
    )
    secret_env = {
        "APP_SIGNING_SEED": SecretStr(secrets["step secret (unremarkable env name)"]),
        "API_KEY": SecretStr(secrets["step secret (API_KEY)"]),
    }
    gate = tmp_path / "go"
    streaming = AppStateStep(
        name="sessions",
        backup_command=streamer_argv(tmp_path / "sessions.pid", 2, gate=gate),
        restore_command=restorer_argv(tmp_path / "sessions.restored"),
        secret_env=secret_env,
    )
    leaky = AppStateStep(
        name="leaky",
        backup_command=[sys.executable, "-c", LEAKY, "0"],
        restore_command=[sys.executable, "-c", LEAKY, "0"],
        secret_env=secret_env,
    )
    target = AppStateTarget(steps=[streaming, leaky])

    seen: set[int] = set()

    def scan_argv_while_the_engine_runs():
        pid = pid_of(tmp_path / "sessions.pid")
        seen.update(scan.proc_argv())
        seen.add(-pid if pid in seen else 0)
        gate.touch()

    watcher = threading.Thread(target=scan_argv_while_the_engine_runs)
    watcher.start()
    result = backup_component("app-state", target=target, store=store)
    watcher.join()
    assert any(p < 0 for p in seen), "the engine's argv was not among those scanned"

    failing = AppStateTarget(
        steps=[leaky.model_copy(update={"backup_command": leaky.backup_command[:-1] + ["3"]})]
    )
    state = backup_component("app-state", target=failing, store=store, return_state=True)
    assert state.is_failed() and "exited with status 3" in state.message
    assert "connecting with seed=*** key=***" in state.message  # the stderr tail, redacted
    scan.text("error message", state.message)
    with pytest.raises(Exception) as err:
        state.result()
    scan.text("error message", str(err.value))

    verify_backups(components=["app-state"], store=store)
    report = restore_component("app-state", backup_id=result.id, target=target, store=store)
    assert report["restored_steps"] == ["sessions", "leaky"]
    assert (tmp_path / "sessions.restored").stat().st_size == 2 * 1024 * 1024

    scan.logs(caplog.text)
    assert "connecting with seed=***" in caplog.text  # the engine's stderr was logged, redacted
    scan.store(store)
    scan.prefect()
    scan.assert_clean(require=EVERY_PLACE)


@pytest.mark.fault(
    "secrets",
    "an engine started from a flow pod whose environment holds the Prefect API credentials the "
    "worker gives it (PREFECT_API_KEY, PREFECT_API_AUTH_STRING)",
    "the engine's environment holds neither; what the flow passes it explicitly, and paths such "
    "as PGSSLKEY, it still gets",
)
def test_no_engine_inherits_the_flow_pod_s_prefect_credentials(monkeypatch):
    import json

    from tasks.proc import run

    key, auth = random_secret("pfkey"), random_secret("pfauth")
    monkeypatch.setenv("PREFECT_API_KEY", key)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", f"admin:{auth}")
    monkeypatch.setenv("PGSSLKEY", "/etc/klb/secrets/client.key")
    given = random_secret("given")
    out = run(
        [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"], {"API_KEY": given}
    )
    child = json.loads(out)
    assert key not in out and auth not in out, sorted(child)
    assert child["API_KEY"] == given and child["PGSSLKEY"] == "/etc/klb/secrets/client.key"
