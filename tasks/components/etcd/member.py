"""A snapshot checked the only sure way: fetched whole, its status compared with the manifest, then
restored into a throwaway member on loopback ports whose revision and key count are compared
(`check_served`: a lease that runs out once the member is up is not a difference).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from subprocess import Popen
from typing import Any

from blocks.etcd import EtcdTarget
from blocks.store import StoreBlock
from tasks.components.etcd.tools import OBJECT, STATUS_FIELDS, Tools, check_served, snapshot_status
from tasks.errors import BadInput, ComponentFailed, ConfigurationError, IntegrityError
from tasks.models import Manifest
from tasks.proc import free_port, run, start, stop
from tasks.storage.session import read_object
from tasks.timing import rounded, timed


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


BIND_TRIES = 3  # a free port may be taken by another process before the member binds it


@contextmanager
def throwaway_member(tl: Tools, snap: Path, workdir: Path, token: str) -> Iterator[str]:
    """Restore `snap` into a NEW data dir, serve it on free loopback ports; yield its client URL.
    Always stopped; the caller's private dir removes the data. A port taken between choosing and
    binding it: restored again on other ports (the data dir records the peer URL)."""
    for attempt in range(1, BIND_TRIES + 1):
        try:
            server, client = _start_member(tl, snap, workdir / f"member-{attempt}", token)
            break
        except _PortTaken:
            if attempt == BIND_TRIES:
                raise ComponentFailed(
                    f"the throwaway etcd could not bind loopback ports {BIND_TRIES} times: the machine's "
                    "ports are busy; run the check again"
                ) from None
    try:
        yield client
    finally:
        stop(server)


class _PortTaken(Exception):
    pass


def _start_member(tl: Tools, snap: Path, workdir: Path, token: str) -> tuple[Popen, str]:
    workdir.mkdir(mode=0o700)
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
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
    try:
        server = start(argv, logfile)
    except ConfigurationError:
        raise ConfigurationError(f"etcd server binary not found ({tl.etcd}): install etcd-server") from None
    deadline = time.monotonic() + 60
    while not _healthy(client):
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            tail = logfile.read_text(errors="replace")[-1500:]
            if "address already in use" in tail:
                raise _PortTaken
            raise ComponentFailed(f"the throwaway etcd restored from the snapshot did not start:\n{tail}")
        time.sleep(0.1)
    return server, client


def _restore_and_check(
    tl: Tools, target: EtcdTarget | None, store: StoreBlock, manifest: Manifest, tmp: Path, token: str
) -> dict[str, Any]:
    seconds: dict[str, float] = {}  # per phase: what a drill's RTO is made of
    with timed(seconds, "fetch"):
        snap = _download(store, manifest, tmp)
    with timed(seconds, "status"):
        status = _check_status(tl, snap, manifest)
    want_rev = max(status["revision"], 1)  # a never-written etcd: the file says 0, a server says 1
    want_keys, env = manifest.engine.get("keys"), {"ETCDCTL_API": "3"}
    restoring = time.monotonic()
    with throwaway_member(tl, snap, tmp, token) as url:
        seconds["restore+start"] = time.monotonic() - restoring
        try:  # the restored member keeps the cluster's users and auth: log in as the backup did
            with timed(seconds, "check"):
                served = check_served(
                    tl, target, env, url, want_rev, want_keys, manifest.engine.get("kv_hash")
                )
        except ComponentFailed as exc:
            if "user name is empty" not in str(exc):
                raise
            raise ConfigurationError(
                f"the etcd of {manifest.id} has auth enabled: give the target's username and password "
                "(those of the cluster it was taken from) to check it"
            ) from None
    checks = {**served, "snapshot_hash": status["hash"], "seconds": rounded(seconds)}
    if not (checks["revision"]["ok"] and checks["keys"]["ok"] and checks["kv_hash"]["ok"]):
        raise IntegrityError(f"etcd restored from {manifest.id} does not match its manifest: {checks}")
    return checks
