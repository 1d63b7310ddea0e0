"""etcdctl and etcdutl: finding them, and what they say about endpoints and snapshot files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocks.etcd import EtcdTarget
from tasks.errors import ComponentFailed, ConfigurationError, IntegrityError
from tasks.proc import find_binary, run

OBJECT = "snapshot.db"
STATUS_FIELDS = ("hash", "revision", "totalKey", "totalSize")
MANAGED_HINT = (
    "On managed Kubernetes (EKS, GKE, AKS and the like) etcd is not reachable at all: there "
    "ConfigMaps and Secrets are covered by the Velero backups (component 'kubernetes'); do not "
    "configure an etcd target."
)


@dataclass(frozen=True)
class Tools:
    """etcdctl talks to the cluster; file work (status, restore) is etcdutl's on 3.5+, etcdctl's on 3.4."""

    etcdctl: str
    etcdutl: str | None
    etcd: str

    @property
    def file_tool(self) -> str:
        return self.etcdutl or self.etcdctl

    def describe(self) -> str:
        return "etcdutl" if self.etcdutl else "etcdctl (3.4: no etcdutl)"


def tools(target: EtcdTarget | None) -> Tools:
    target = target or EtcdTarget()
    ctl = find_binary(
        target.etcdctl,
        missing=f"etcdctl not found ({target.etcdctl!r}): install etcd-client (Debian) or the etcd release, "
        "or set the target's etcdctl path",
    )
    utl = find_binary(
        target.etcdutl or "etcdutl",
        missing=f"etcdutl not found at {target.etcdutl!r}: fix the target's etcdutl path"
        if target.etcdutl
        else None,
    )
    return Tools(ctl, utl, find_binary(target.etcd) or target.etcd)


@contextmanager
def private_dir(target: EtcdTarget | None, what: str) -> Iterator[Path]:
    """A 0700 directory, removed with everything in it on exit (success or failure)."""
    base = target.work_dir if target and target.work_dir else None
    path = Path(tempfile.mkdtemp(prefix=f"klb-etcd-{what}-", dir=base))
    try:
        os.chmod(path, 0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def snapshot_status(tl: Tools, path: Path) -> dict[str, int]:
    env = {"ETCDCTL_API": "3"}
    try:
        out = run([tl.file_tool, "snapshot", "status", str(path), "-w", "json"], env, name="snapshot status")
        status = json.loads(out)
    except (ComponentFailed, json.JSONDecodeError) as exc:
        raise IntegrityError(f"the etcd snapshot is not a valid etcd database: {exc}") from None
    return {k: int(status[k]) for k in STATUS_FIELDS}


PROMPT = "Password: "  # what etcdctl prints on stdout when it reads the password from stdin


def ctl(
    tl: Tools, target: EtcdTarget | None, env: dict[str, str], endpoint: str, *args: str,
    timeout: float = 60, name: str = "etcdctl",
) -> str:  # fmt: skip
    """etcdctl against `endpoint`, its stdout. TLS comes as file paths in `env`; etcd auth as
    `--user <name>` with the password on stdin, which etcdctl reads when `--user` has none:
    never in argv or the environment."""
    argv = [tl.etcdctl, "--endpoints", endpoint]
    if target is None or not target.username or target.password is None:
        return run([*argv, *args], env, timeout=timeout, name=name)
    password = target.password.get_secret_value()
    try:
        out = run([*argv, "--user", target.username, *args], env, timeout=timeout, name=name,
                  redact=[password], stdin=f"{password}\n".encode())  # fmt: skip
    except ComponentFailed as exc:
        if "authentication failed" in str(exc):
            raise ConfigurationError(
                f"etcd refused user {target.username!r} at {endpoint}: check the target's username and "
                "password (a backup is checked with those of the cluster it was taken from)"
            ) from None
        raise
    return out.removeprefix(PROMPT).lstrip("\n")


def _endpoint_status(
    tl: Tools, target: EtcdTarget | None, env: dict[str, str], endpoint: str, timeout: float
) -> dict[str, Any]:
    out = ctl(tl, target, env, endpoint, "endpoint", "status", "-w", "json", timeout=timeout)
    status = json.loads(out)[0]["Status"]
    return {
        "endpoint": endpoint,
        "version": status.get("version"),
        "db_size": status.get("dbSize"),
        "revision": status.get("header", {}).get("revision"),
        "raft_index": status.get("raftIndex"),
        "leader": status.get("leader") == status.get("header", {}).get("member_id"),
    }


def _pick_endpoint(tl: Tools, target: EtcdTarget, env: dict[str, str]) -> dict[str, Any]:
    """The first endpoint that answers: a snapshot is taken from exactly one member."""
    errors = []
    for endpoint in target.endpoints:
        try:
            return _endpoint_status(tl, target, env, endpoint, target.dial_timeout_seconds + 10)
        except (ComponentFailed, ValueError, KeyError, IndexError) as exc:
            errors.append(f"{endpoint}: {str(exc).splitlines()[-1][:200]}")
    raise ConfigurationError(
        "etcd is unreachable (" + "; ".join(errors) + "). Check the endpoints and the TLS files "
        "(CA, client cert and key of the etcd client). " + MANAGED_HINT
    )


def count_keys(
    tl: Tools, target: EtcdTarget | None, env: dict[str, str], endpoint: str, revision: int | None = None
) -> tuple[int, int]:
    """(number of keys, store revision) as the cluster answers; at `revision` when given."""
    args = ["get", "", "--from-key", "--keys-only", "--limit", "1", "-w", "json"]
    if revision is not None:
        args += ["--rev", str(revision)]
    out = json.loads(ctl(tl, target, env, endpoint, *args, name="etcdctl get"))
    return int(out.get("count", 0)), int(out["header"]["revision"])
