"""Helpers of the fault suite: stores behind the proxy, snapshots, engine-like steps."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sys
from pathlib import Path

# fast botocore retries for the suite: 3 attempts, short timeouts (the store default is 6)
FAST_RETRIES = {
    "retries": {"mode": "standard", "total_max_attempts": 3},
    "connect_timeout": 2,
    "read_timeout": 5,
}


def make_s3_store(endpoint: str, bucket: str, key_id: str = "testing", secret: str = "testing", **kwargs):
    """sandbox.s3.s3_store with the suite's fast retries."""
    from sandbox.s3 import s3_store

    config = {**FAST_RETRIES, **kwargs.pop("client_config", {})}
    return s3_store(endpoint, bucket, key_id=key_id, secret=secret, client_config=config, **kwargs)


# --- snapshots: "nothing changed" ----------------------------------------------------------


def bucket_state(client, bucket: str) -> dict:
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects[item["Key"]] = item["ETag"]
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return {"objects": objects, "uploads": sorted(u["Key"] for u in uploads)}


def dir_state(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def s3_keys(client, bucket: str) -> list[str]:
    return sorted(bucket_state(client, bucket)["objects"])


def multipart_uploads(client, bucket: str) -> list[str]:
    return bucket_state(client, bucket)["uploads"]


# --- app-state steps that behave like engines ----------------------------------------------

# argv[1]: pid file; argv[2]: MiB to write (0: until killed); argv[3]: seconds between MiB;
# argv[4]: a file to wait for before writing (or '-'); writes incompressible data.
STREAMER = """
import os, sys, time
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
mib, pause, gate = int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + 60
while gate != "-" and not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.02)
i = 0
while (mib == 0 or i < mib) and time.monotonic() < deadline:
    sys.stdout.buffer.write(os.urandom(1 << 20)); sys.stdout.flush()
    i += 1
    time.sleep(pause)
"""
# restore: stdin -> argv[1], written aside then renamed (what a careful script does)
RESTORER = """
import os, shutil, sys
with open(sys.argv[1] + ".new", "wb") as fh:
    shutil.copyfileobj(sys.stdin.buffer, fh)
os.replace(sys.argv[1] + ".new", sys.argv[1])
"""


def streamer_argv(pidfile: Path, mib: int, pause: float = 0.0, gate: Path | str = "-") -> list[str]:
    return [sys.executable, "-c", STREAMER, str(pidfile), str(mib), str(pause), str(gate)]


def restorer_argv(dest: Path) -> list[str]:
    return [sys.executable, "-c", RESTORER, str(dest)]


def app_target(tmp: Path, mib: int = 1, pause: float = 0.0, name: str = "sessions", **step_kwargs):
    from blocks.app_state import AppStateStep, AppStateTarget

    tmp.mkdir(parents=True, exist_ok=True)
    step = AppStateStep(
        name=name,
        backup_command=streamer_argv(tmp / f"{name}.pid", mib, pause, step_kwargs.pop("gate", "-")),
        restore_command=restorer_argv(tmp / f"{name}.restored"),
        **step_kwargs,
    )
    return AppStateTarget(steps=[step])


def pid_of(pidfile: Path, timeout: float = 20) -> int:
    from sandbox.services import wait_until

    wait_until(pidfile.exists, timeout, f"the step to write {pidfile}")
    return int(pidfile.read_text())


def random_secret(label: str) -> str:
    return f"{label}-{secrets.token_hex(12)}"


@contextlib.contextmanager
def env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def assert_refused_clearly(call, error: str, expected: str, caplog) -> None:
    """`call()` fails with `error` carrying `expected`: raised before any flow ran (block
    validation), or as a failed flow state whose message is that one line, with no traceback
    dumped by Prefect's logs."""
    from prefect.states import State

    try:
        outcome = call()
    except Exception as exc:
        assert type(exc).__name__ == error, f"{type(exc).__name__}: {exc}"
        assert expected in str(exc), str(exc)
        return
    assert isinstance(outcome, State), f"no error: {outcome!r}"
    assert outcome.is_failed(), outcome
    assert f"{error}: " in outcome.message and expected in outcome.message, outcome.message
    assert "Traceback" not in outcome.message
    dumps = [r for r in caplog.records if r.name.startswith("prefect") and r.exc_info]
    assert not dumps, [r.getMessage() for r in dumps]
