"""etcd snapshots: `etcdctl snapshot save` into the store, verified by restoring a throwaway member.

etcdctl writes a snapshot to a path, fsyncs it and renames it (a FIFO fails with "sync ...:
invalid argument"), and `snapshot status` needs a file too: this is the one component that keeps
a transient local file, in a private 0700 directory, deleted as soon as it is uploaded.
See docs/etcd.md.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from blocks.etcd import EtcdTarget
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions
from tasks.components.etcd.swap import check_preflight, execute, on_control_plane, publish, swap_plan
from tasks.errors import BadInput, ComponentFailed, ConfigurationError, IntegrityError
from tasks.models import Manifest
from tasks.proc import run
from tasks.storage.session import BackupSession, read_object

Target = EtcdTarget
log = logging.getLogger(__name__)
OBJECT = "snapshot.db"
STATUS_FIELDS = ("hash", "revision", "totalKey", "totalSize")
MANAGED_HINT = (
    "On managed Kubernetes (EKS, GKE, AKS and the like) etcd is not reachable at all: there "
    "ConfigMaps and Secrets are covered by the Velero backups (component 'kubernetes'); do not "
    "configure an etcd target."
)


def default_target() -> EtcdTarget:
    ref = os.environ.get("KLB_ETCD_TARGET")
    if ref:
        return EtcdTarget.load(ref)
    raise ConfigurationError(
        "no etcd target: create a 'klb-etcd-target' block and pass its name, or set KLB_ETCD_TARGET. "
        + MANAGED_HINT
    )


# --- tools -----------------------------------------------------------------------------------


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
    ctl = shutil.which(target.etcdctl)
    if not ctl:
        raise ConfigurationError(
            f"etcdctl not found ({target.etcdctl!r}): install etcd-client (Debian) or the etcd release, "
            "or set the target's etcdctl path"
        )
    utl = shutil.which(target.etcdutl) if target.etcdutl else shutil.which("etcdutl")
    if target.etcdutl and not utl:
        raise ConfigurationError(f"etcdutl not found at {target.etcdutl!r}: fix the target's etcdutl path")
    return Tools(ctl, utl, shutil.which(target.etcd) or target.etcd)


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


def _ctl(tl: Tools, endpoint: str, *args: str) -> list[str]:
    return [tl.etcdctl, "--endpoints", endpoint, *args]


def _endpoint_status(tl: Tools, env: dict[str, str], endpoint: str, timeout: float) -> dict[str, Any]:
    out = run(_ctl(tl, endpoint, "endpoint", "status", "-w", "json"), env, timeout=timeout, name="etcdctl")
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
            return _endpoint_status(tl, env, endpoint, target.dial_timeout_seconds + 10)
        except (ComponentFailed, ValueError, KeyError, IndexError) as exc:
            errors.append(f"{endpoint}: {str(exc).splitlines()[-1][:200]}")
    raise ConfigurationError(
        "etcd is unreachable (" + "; ".join(errors) + "). Check the endpoints and the TLS files "
        "(CA, client cert and key of the etcd client). " + MANAGED_HINT
    )


def count_keys(tl: Tools, env: dict[str, str], endpoint: str, revision: int | None = None) -> tuple[int, int]:
    """(number of keys, store revision) as the cluster answers; at `revision` when given."""
    args = ["get", "", "--from-key", "--keys-only", "--limit", "1", "-w", "json"]
    if revision is not None:
        args += ["--rev", str(revision)]
    out = json.loads(run(_ctl(tl, endpoint, *args), env, timeout=60, name="etcdctl get"))
    return int(out.get("count", 0)), int(out["header"]["revision"])


# --- backup / verify -------------------------------------------------------------------------


def backup(target: EtcdTarget, session: BackupSession) -> None:
    if session.store.encryption_key is None:
        log.warning(
            "etcd snapshot %s goes to %s WITHOUT client-side encryption: it holds every Secret of the "
            "cluster. Set the store's encryption_key (docs/etcd.md).",
            session.id,
            session.store.location,
        )
    tl = tools(target)
    with target.client_env() as env, private_dir(target, "backup") as tmp:
        member = _pick_endpoint(tl, target, env)
        endpoint = member["endpoint"]
        snap = tmp / OBJECT
        taken = datetime.now(UTC)
        # etcdctl's --command-timeout (default 5s) bounds the whole download: a larger database
        # over a slow link fails with "context deadline exceeded" unless it is raised
        save_env = {**env, "ETCDCTL_COMMAND_TIMEOUT": f"{target.command_timeout_seconds}s"}
        run(
            _ctl(tl, endpoint, "snapshot", "save", str(snap)),
            save_env,
            timeout=target.command_timeout_seconds + 30,
            name="etcdctl snapshot save",
        )
        status = snapshot_status(tl, snap)
        try:  # the user keys at exactly the snapshot's revision: what a restore must give back
            keys, _ = count_keys(tl, env, endpoint, status["revision"])
        except (ComponentFailed, ValueError, KeyError) as exc:
            log.warning("could not count keys at revision %s: %s", status["revision"], exc)
            keys = None
        with open(snap, "rb") as fh:
            session.write(OBJECT, fh, meta={"format": "etcd-snapshot"})
        snap.unlink()  # the local copy lives only as long as the upload
    session.source_time = taken
    session.engine.update(
        {"snapshot_status": status, "keys": keys, "endpoint": endpoint, "etcd_version": member["version"]}
    )
    session.fingerprint = {"revision": status["revision"], "keys": keys, "hash": status["hash"]}


def _download(store: StoreBlock, manifest: Manifest, tmp: Path) -> Path:
    """The snapshot as a file, whole and checked (sha256 is verified when the stream ends)."""
    try:
        obj = manifest.object(OBJECT)
    except KeyError:
        raise BadInput(f"backup {manifest.id} has no {OBJECT}: is it an etcd backup?") from None
    path = tmp / OBJECT
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        for chunk in read_object(store, obj):
            fh.write(chunk)
    return path


def _check_status(tl: Tools, path: Path, manifest: Manifest) -> dict[str, int]:
    status = snapshot_status(tl, path)
    recorded = manifest.engine.get("snapshot_status") or {}
    diff = {k: (recorded.get(k), status[k]) for k in STATUS_FIELDS if recorded.get(k) != status[k]}
    if diff:
        raise IntegrityError(
            f"etcd snapshot of {manifest.id} differs from its manifest (recorded, found): {diff}"
        )
    return status


def verify(target: EtcdTarget | None, manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
    tl = tools(target)
    with private_dir(target, "verify") as tmp:
        status = _check_status(tl, _download(store, manifest, tmp), manifest)
    return {"snapshot_status": status, "tool": tl.describe()}


# --- throwaway member ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _restore_dir(
    tl: Tools, snap: Path, data_dir: Path, name: str, peer: str, cluster: str, token: str
) -> None:
    run(
        [
            tl.file_tool,
            "snapshot",
            "restore",
            str(snap),
            "--data-dir",
            str(data_dir),
            "--name",
            name,
            "--initial-cluster",
            cluster,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster-token",
            token,
        ],
        {"ETCDCTL_API": "3"},
        timeout=1800,
        name="snapshot restore",
    )


def _healthy(url: str) -> bool:
    with suppress(Exception), urllib.request.urlopen(f"{url}/health", timeout=1) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read()).get("health") in ("true", True)
    return False


@contextmanager
def throwaway_member(tl: Tools, snap: Path, workdir: Path, token: str) -> Iterator[str]:
    """Restore `snap` into a NEW data dir, serve it on free loopback ports; yield its client URL.
    Always stopped; the caller's private dir removes the data."""
    client, peer = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    data, name = workdir / "member", "klb-verify"
    _restore_dir(tl, snap, data, name, peer, f"{name}={peer}", token)
    logfile = workdir / "etcd.log"
    argv = [
        tl.etcd,
        "--name", name,
        "--data-dir", str(data),
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{name}={peer}",
        "--initial-cluster-token", token,
    ]  # fmt: skip
    with open(logfile, "wb") as out:
        try:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            raise ConfigurationError(
                f"etcd server binary not found ({tl.etcd}): install etcd-server"
            ) from None
    try:
        deadline = time.monotonic() + 60
        while not _healthy(client):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = logfile.read_text(errors="replace")[-1500:]
                raise ComponentFailed(f"the throwaway etcd restored from the snapshot did not start:\n{tail}")
            time.sleep(0.1)
        yield client
    finally:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _restore_and_check(
    tl: Tools, store: StoreBlock, manifest: Manifest, tmp: Path, token: str
) -> dict[str, Any]:
    snap = _download(store, manifest, tmp)
    status = _check_status(tl, snap, manifest)
    with throwaway_member(tl, snap, tmp, token) as url:
        keys, revision = count_keys(tl, {"ETCDCTL_API": "3"}, url)
    want_keys = manifest.engine.get("keys")
    want_rev = max(status["revision"], 1)  # a never-written etcd: the file says 0, a server says 1
    checks = {
        "revision": {"expected": want_rev, "found": revision, "ok": revision == want_rev},
        "keys": {"expected": want_keys, "found": keys, "ok": want_keys is None or keys == want_keys},
        "snapshot_hash": status["hash"],
    }
    if not (checks["revision"]["ok"] and checks["keys"]["ok"]):
        raise IntegrityError(f"etcd restored from {manifest.id} does not match its manifest: {checks}")
    return checks


# --- restore ---------------------------------------------------------------------------------


class RestoreOptions(StrictOptions):
    execute_swap: bool = Field(
        default=False,
        description="the operator's approval: stop kube-apiserver and etcd, swap the data dir, restart. "
        "Only on the control-plane node. Default: verify in a throwaway member and return the plan.",
    )


def restore(
    target: EtcdTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    tl = tools(target)
    if options.execute_swap:
        if not on_control_plane(target):
            raise ConfigurationError(
                f"execute_swap refused: this is not the etcd control-plane node (no "
                f"{Path(target.manifests_dir) / 'etcd.yaml'} / {Path(target.data_dir) / 'member'}). Run the "
                "restore flow there (a Job pinned to the node with hostPath mounts) or follow the plan by "
                "hand. " + MANAGED_HINT
            )
        if not target.peer_url:
            raise BadInput(
                "execute_swap needs the target's peer_url (and member_name): this member's real values"
            )
        check_preflight(swap_plan(tl, target, manifest, OBJECT))  # fail before the long verification
    with private_dir(target, "restore") as tmp:
        checks = _restore_and_check(tl, store, manifest, tmp, f"klb-verify-{secrets.token_hex(4)}")
        plan = swap_plan(tl, target, manifest, str(tmp / OBJECT) if options.execute_swap else f"./{OBJECT}")
        publish(manifest, plan)
        report: dict[str, Any] = {
            "verified_in_throwaway_member": checks,
            "swap_plan": plan,
            "swap_executed": False,
            "tool": tl.describe(),
        }
        if options.execute_swap:
            report["swap_steps_done"] = execute(plan, target, tl)
            report["swap_executed"] = True
        else:
            report["next"] = (
                "the snapshot restores and matches its manifest. To put it in place, run this restore "
                "with execute_swap=true on the control-plane node, or fetch the checked snapshot with "
                f"`python -m tasks.components.etcd download {manifest.id} ./{OBJECT}` "
                "and follow swap_plan by hand."
            )
    return report


def drill(target: EtcdTarget | None, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict[str, Any]:
    """Restore into a throwaway member on loopback, check revision and key count, stop, delete."""
    tl = tools(target)
    with private_dir(target, f"drill-{drill_id}"[:40]) as tmp:
        checks = _restore_and_check(tl, store, manifest, tmp, f"klb-drill-{drill_id}")
    return {"verified": True, "checks": checks}


def drill_cleanup(target: EtcdTarget | None, drill_id: str) -> None:
    """Nothing outlives a drill: its member runs in a private directory removed on exit, and
    the process dies with it."""


def describe_current_state(target: EtcdTarget) -> dict[str, Any]:
    tl = tools(target)
    members = []
    with target.client_env() as env:
        for endpoint in target.endpoints:
            try:
                member = _endpoint_status(tl, env, endpoint, target.dial_timeout_seconds + 10)
                member["keys"], _ = count_keys(tl, env, endpoint)
            except (ComponentFailed, ValueError, KeyError, IndexError) as exc:
                member = {"endpoint": endpoint, "error": str(exc).splitlines()[-1][:200]}
            members.append(member)
    return {"members": members, "tool": tl.describe(), "on_control_plane": on_control_plane(target)}


# --- by hand: fetch a checked snapshot for the swap plan ------------------------------------


def download_snapshot(
    store: StoreBlock, backup_id: str, dest: Path, target: EtcdTarget | None = None
) -> dict:
    """Write the snapshot of `backup_id` to `dest` (0600), only once sha256 and status check out."""
    from tasks.storage.catalog import get_backup

    manifest = get_backup(store, backup_id, "etcd")
    dest = Path(dest)
    if dest.exists():
        raise BadInput(f"{dest} exists: choose a new path (nothing was overwritten)")
    with private_dir(target or EtcdTarget(work_dir=str(dest.parent)), "download") as tmp:
        snap = _download(store, manifest, tmp)
        status = _check_status(tools(target), snap, manifest)
        shutil.move(snap, dest)
    return {"backup_id": manifest.id, "path": str(dest), "snapshot_status": status}


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.components.etcd download <backup-id|latest> <path> [--store NAME]`"""
    import argparse
    import sys

    from flows.common import load_store
    from tasks.errors import BackupError

    parser = argparse.ArgumentParser(
        prog="python -m tasks.components.etcd", description="fetch a checked etcd snapshot"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="the snapshot file for the swap plan, checked")
    dl.add_argument("backup_id")
    dl.add_argument("path")
    dl.add_argument("--store", help="store block name (default: $KLB_STORE or the local store)")
    args = parser.parse_args(argv)
    try:
        print(
            json.dumps(download_snapshot(load_store(args.store), args.backup_id, Path(args.path)), indent=2)
        )
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
