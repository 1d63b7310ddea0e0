"""etcd snapshots: `etcdctl snapshot save` into the store, verified by restoring a throwaway member.

etcdctl writes a snapshot to a path, fsyncs it and renames it (a FIFO fails with "sync ...:
invalid argument"), and `snapshot status` needs a file too: this is the one component that keeps
a transient local file, in a private 0700 directory, deleted as soon as it is uploaded.
See docs/etcd.md.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from blocks.etcd import EtcdTarget
from blocks.store import StoreBlock
from tasks.components.contract import StrictOptions, target_from_env
from tasks.components.etcd.member import (
    _check_status,
    _download,
    _healthy,
    _restore_and_check,
    throwaway_member,
)
from tasks.components.etcd.swap import (
    SwapRolledBack,
    check_preflight,
    execute,
    on_control_plane,
    publish,
    swap_plan,
)
from tasks.components.etcd.tools import (
    MANAGED_HINT,
    OBJECT,
    STATUS_FIELDS,
    Tools,
    _endpoint_status,
    _pick_endpoint,
    count_keys,
    ctl,
    kv_hash,
    private_dir,
    snapshot_status,
    tools,
)
from tasks.errors import BackupError, BadInput, ComponentFailed, ConfigurationError, target_untouched
from tasks.models import Manifest
from tasks.storage.session import BackupSession

Target = EtcdTarget
log = logging.getLogger(__name__)


def default_target() -> EtcdTarget:
    return target_from_env(EtcdTarget, "etcd", "KLB_ETCD_TARGET", hint=MANAGED_HINT)  # type: ignore[return-value]


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
        ctl(tl, target, save_env, endpoint, "snapshot", "save", str(snap),
            timeout=target.command_timeout_seconds + 30, name="etcdctl snapshot save")  # fmt: skip
        # what the snapshot holds is read beside its upload (both only read the file; the
        # facts go into the manifest, written last): after the save, 2.0 -> 1.7 s at 138 MB
        with ThreadPoolExecutor(1, thread_name_prefix="etcd-facts") as pool:
            facts = pool.submit(_snapshot_facts, tl, target, env, endpoint, snap)
            with open(snap, "rb") as fh:
                session.write(OBJECT, fh, meta={"format": "etcd-snapshot"})
            status, keys, kv = facts.result()
        snap.unlink()  # the local copy lives only as long as the upload
    session.source_time = taken
    session.engine.update(
        {
            "snapshot_status": status,
            "keys": keys,
            "kv_hash": kv,
            "endpoint": endpoint,
            "etcd_version": member["version"],
        }
    )
    session.fingerprint = {"revision": status["revision"], "keys": keys, "hash": status["hash"]}


def _snapshot_facts(
    tl: Tools, target: EtcdTarget, env: dict[str, str], endpoint: str, snap: Path
) -> tuple[dict[str, int], int | None, dict[str, int] | None]:
    """The snapshot's status (a snapshot etcdutl cannot read fails the backup), and, at exactly
    its revision, the count of user keys and etcd's hash of every key and value: what a restore
    must give back (either left out, with a warning, where the member cannot say)."""
    status = snapshot_status(tl, snap)
    try:
        keys, _ = count_keys(tl, target, env, endpoint, status["revision"])
    except (ComponentFailed, ValueError, KeyError) as exc:
        log.warning("could not count keys at revision %s: %s", status["revision"], exc)
        keys = None
    try:
        kv = kv_hash(tl, target, env, endpoint, max(status["revision"], 1))
    except (ComponentFailed, ValueError, KeyError, IndexError) as exc:
        log.warning("could not hash the keys at revision %s: %s", status["revision"], exc)
        kv = None
    return status, keys, kv


def verify(target: EtcdTarget | None, manifest: Manifest, store: StoreBlock) -> dict[str, Any]:
    tl = tools(target)
    with private_dir(target, "verify") as tmp:
        status = _check_status(tl, _download(store, manifest, tmp), manifest)
    return {"snapshot_status": status, "tool": tl.describe()}


class RestoreOptions(StrictOptions):
    execute_swap: bool = Field(
        default=False,
        description="the operator's approval: stop kube-apiserver and etcd, swap the data dir, restart. "
        "Only on the control-plane node. Default: verify in a throwaway member and return the plan.",
    )


def writes_target(options: RestoreOptions) -> bool:
    """Without the swap a restore is checked in a throwaway member and writes a plan: nothing live."""
    return options.execute_swap


def check_restore(target: EtcdTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions) -> None:
    """What the swap would refuse, refused before a checklist, safety snapshot or approval: not
    the control-plane node, no peer_url, a leftover of an earlier attempt. Without execute_swap
    nothing is written, so nothing is checked."""
    if not options.execute_swap:
        return
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
    check_preflight(swap_plan(tools(target), target, manifest, OBJECT))


def restore(
    target: EtcdTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    tl = tools(target)
    try:  # before the long verification; a refusal leaves the control plane as it was
        check_restore(target, manifest, store, options)
    except BackupError as exc:
        raise target_untouched(exc) from None
    with private_dir(target, "restore") as tmp:
        try:  # the check in a throwaway member (a damaged snapshot fails here): the swap has not begun
            checks = _restore_and_check(
                tl, target, store, manifest, tmp, f"klb-verify-{secrets.token_hex(4)}"
            )
            plan = swap_plan(
                tl, target, manifest, str(tmp / OBJECT) if options.execute_swap else f"./{OBJECT}"
            )
            publish(manifest, plan)
        except Exception as exc:
            target_untouched(exc)
            raise
        report: dict[str, Any] = {
            "verified_in_throwaway_member": checks,
            "swap_plan": plan,
            "swap_executed": False,
            "tool": tl.describe(),
        }
        if options.execute_swap:
            try:
                report["swap_steps_done"] = execute(plan, target, tl)
            except SwapRolledBack as exc:  # every step undone: the old data dir is live again
                raise target_untouched(exc) from None
            report["swap_executed"] = True
        else:
            report["next"] = (
                "the snapshot restores and matches its manifest. To put it in place, run this restore "
                "with execute_swap=true on the control-plane node, or fetch the checked snapshot with "
                f"tasks.components.etcd.download_snapshot(store, {manifest.id!r}, './{OBJECT}') "
                "and follow swap_plan by hand."
            )
    return report


def drill(target: EtcdTarget | None, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict[str, Any]:
    """Restore into a throwaway member on loopback, check revision and key count, stop, delete."""
    tl = tools(target)
    with private_dir(target, f"drill-{drill_id}"[:40]) as tmp:
        checks = _restore_and_check(tl, target, store, manifest, tmp, f"klb-drill-{drill_id}")
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
                member = _endpoint_status(tl, target, env, endpoint, target.dial_timeout_seconds + 10)
                member["keys"], _ = count_keys(tl, target, env, endpoint)
            except (ComponentFailed, ValueError, KeyError, IndexError) as exc:
                member = {"endpoint": endpoint, "error": str(exc).splitlines()[-1][:200]}
            members.append(member)
    return {"members": members, "tool": tl.describe(), "on_control_plane": on_control_plane(target)}


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


__all__ = [
    "MANAGED_HINT",
    "OBJECT",
    "STATUS_FIELDS",
    "RestoreOptions",
    "Target",
    "Tools",
    "_check_status",
    "_download",
    "_healthy",
    "backup",
    "check_restore",
    "count_keys",
    "default_target",
    "describe_current_state",
    "download_snapshot",
    "drill",
    "drill_cleanup",
    "private_dir",
    "restore",
    "snapshot_status",
    "swap_plan",
    "throwaway_member",
    "tools",
    "verify",
    "writes_target",
]
