"""etcdctl and etcdutl: finding them, and what they say about endpoints and snapshot files."""

from __future__ import annotations

import base64
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


def kv_hash(
    tl: Tools, target: EtcdTarget | None, env: dict[str, str], endpoint: str, revision: int
) -> dict[str, int]:
    """etcd's own hash of every key and value (every revision of each kept since the last
    compaction) up to `revision`, and that compaction's revision: equal on two members that hold
    the same state at `revision` (HashKV; writes after it do not change it)."""
    args = ["endpoint", "hashkv", "--rev", str(revision), "-w", "json"]
    out = json.loads(ctl(tl, target, env, endpoint, *args, name="etcdctl endpoint hashkv"))[0]["HashKV"]
    return {"hash": int(out["hash"]), "compact_revision": int(out.get("compact_revision", 0))}


def _check_kv_hash(
    tl: Tools, target: EtcdTarget | None, env: dict[str, str], endpoint: str, revision: int, want: dict | None
) -> dict[str, Any]:
    """The member's HashKV at `revision` against the one recorded at backup (`want`; None for a
    backup from before it was recorded: not compared). Compared only at the same compaction: a
    compaction of the source between the snapshot and the recording changes the hash, not the data."""
    if not want:
        return {"compared": False, "ok": True, "why": "the backup recorded no HashKV"}
    found = kv_hash(tl, target, env, endpoint, revision)
    if found["compact_revision"] != want["compact_revision"]:
        why = f"compacted at revision {found['compact_revision']}, recorded at {want['compact_revision']}"
        return {"compared": False, "ok": True, "why": why}
    return {"compared": True, "expected": want["hash"], "found": found["hash"], "ok": found == want}


def _listing(
    tl: Tools, target: EtcdTarget | None, env: dict[str, str], endpoint: str, revision: int | None
) -> tuple[dict[bytes, dict[str, Any]], int]:
    """({key: its mod_revision and lease}, store revision): every key, without values."""
    args = ["get", "", "--from-key", "--keys-only", "-w", "json"]
    if revision is not None:
        args += ["--rev", str(revision)]
    out = json.loads(ctl(tl, target, env, endpoint, *args, name="etcdctl get"))
    kvs = {base64.b64decode(kv["key"]): kv for kv in out.get("kvs") or []}
    return kvs, int(out["header"]["revision"])


def check_served(
    tl: Tools, target: EtcdTarget | None, env: dict[str, str], endpoint: str, revision: int, keys: int | None,
    kv: dict[str, int] | None = None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Whether the member at `endpoint`, just started on data restored from a snapshot at
    `revision` holding `keys` keys whose HashKV at `revision` was `kv`, serves exactly that:
    {"revision": ..., "keys": ..., "kv_hash": ...}, each with ok (and expected and found).

    A lease in the snapshot keeps running in the restored member: one that runs out before the
    check deletes its keys and moves the member's revision on (kube-apiserver's master leases
    last 15 s). So when the member is past `revision`, the keys are counted AT `revision`, and
    every revision after it must hold nothing but the deletion of keys that had a lease: a key
    written or changed since, or an unleased key deleted, is still a difference."""
    found, current = count_keys(tl, target, env, endpoint)
    rev: dict[str, Any] = {"expected": revision, "found": current, "ok": current == revision}
    if current > revision:  # below it: the member lacks revisions, and the check fails as it is
        found, _ = count_keys(tl, target, env, endpoint, revision)
        then, _ = _listing(tl, target, env, endpoint, revision)
        now, rev["found"] = _listing(tl, target, env, endpoint, None)
        written = [k for k, kv in now.items() if int(kv.get("mod_revision", 0)) > revision]
        deleted = [k for k in then if k not in now]
        unleased = [k for k in deleted if not int(then[k].get("lease", 0))]
        changed = [f"written {k.decode(errors='replace')!r}" for k in sorted(written)]
        changed += [f"deleted without a lease {k.decode(errors='replace')!r}" for k in sorted(unleased)]
        # a lease's keys go in one revision: a key written and deleted again since shows only here
        revoked = {then[k]["lease"] for k in deleted if k not in unleased}
        if not changed and rev["found"] - revision != len(revoked):
            changed.append(
                f"{rev['found'] - revision} revision(s) since, {len(revoked)} of them explained by leases"
            )
        rev["ok"] = not changed
        rev["leased_keys_expired_since"] = len(deleted) - len(unleased)
        if changed:
            rev["changed_since"] = changed[:20]
    return {
        "revision": rev,
        "keys": {"expected": keys, "found": found, "ok": keys is None or found == keys},
        # the whole state, not only its size: same keys and values at the backup's revision
        "kv_hash": (
            _check_kv_hash(tl, target, env, endpoint, revision, kv)
            if current >= revision  # below it: the revision check fails already
            else {"compared": False, "ok": True, "why": "the member lacks the revision"}
        ),
    }
