"""The etcd control-plane swap: an exact plan (every command, in order, with its rollback),
published for review, and executed only with the operator's approval on the control-plane node.
"""

from __future__ import annotations

import logging
import shlex
import socket
import time
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError

from blocks.etcd import EtcdTarget, SwapMode
from tasks.components.etcd.tools import Tools, check_served, ctl
from tasks.errors import BadInput, ComponentFailed
from tasks.models import Manifest
from tasks.proc import run

log = logging.getLogger(__name__)


def _step(
    text: str, argv: list[str] | None = None, kind: str = "run", undo: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One step of the swap, and what puts it back (run in reverse order if a later step fails)."""
    return {"step": text, "argv": argv, "kind": kind, "undo": undo or []}


def _wait(up: bool) -> dict[str, Any]:
    return _step("wait until etcd is healthy" if up else "wait until etcd no longer answers",
                 kind="wait-healthy" if up else "wait-down")  # fmt: skip


def swap_plan(tl: Tools, target: EtcdTarget, manifest: Manifest, snapshot_path: str) -> dict[str, Any]:
    """The exact control-plane swap for this node: every command, in order, and its rollback."""
    tag = manifest.id
    name = target.member_name or socket.gethostname()
    peer = target.peer_url or "https://<this-node-ip>:2380"
    cluster = target.initial_cluster or f"{name}={peer}"
    data, restored, old = target.data_dir, f"{target.data_dir}-restored-{tag}", f"{target.data_dir}-old-{tag}"
    restore_argv = [
        tl.file_tool, "snapshot", "restore", snapshot_path, "--data-dir", restored, "--name", name,
        "--initial-cluster", cluster, "--initial-advertise-peer-urls", peer,
        "--initial-cluster-token", f"klb-{tag}",
    ]  # fmt: skip
    failed = f"{data}-failed-{tag}"
    # before kube-apiserver writes again: etcd must serve the backup, not data it found elsewhere
    check = {
        **_step("check that etcd serves the backup's revision and keys", kind="check-restored"),
        "expect": {
            "revision": max(int((manifest.engine.get("snapshot_status") or {}).get("revision") or 0), 1),
            "keys": manifest.engine.get("keys"),
            "kv_hash": manifest.engine.get("kv_hash"),
        },
    }
    restore_step = _step(
        "restore the verified snapshot into a NEW data dir",
        restore_argv,
        undo=[_step("keep the restored data dir aside as failed", ["mv", "-T", restored, failed])],
    )
    old_aside = _step(
        "keep the old data dir for rollback",
        ["mv", "-T", data, old],
        undo=[_step("put the old data dir back", ["mv", "-T", old, data])],
    )
    restored_in = _step(
        "put the restored data dir in place",
        ["mv", "-T", restored, data],
        undo=[_step("take the restored data dir out", ["mv", "-T", data, restored])],
    )
    if target.swap_mode == SwapMode.static_pod:
        man, hold = Path(target.manifests_dir), f"{target.manifests_dir}-klb-hold-{tag}"
        api_out = ["mv", str(man / "kube-apiserver.yaml"), hold]
        api_in = ["mv", f"{hold}/kube-apiserver.yaml", str(man)]
        etcd_out = ["mv", str(man / "etcd.yaml"), hold]
        etcd_in = ["mv", f"{hold}/etcd.yaml", str(man)]
        steps = [
            restore_step,
            _step(
                "hold the static pod manifests aside",
                ["mkdir", "-m", "0700", hold],
                undo=[_step("remove the empty hold dir", ["rmdir", hold])],
            ),
            _step(
                "stop kube-apiserver (kubelet removes its pod)",
                api_out,
                undo=[_step("start kube-apiserver again", api_in)],
            ),
            _step(
                "stop etcd (kubelet removes its pod)",
                etcd_out,
                undo=[_step("start etcd again", etcd_in), _wait(True)],
            ),
            _wait(False),
            old_aside,
            restored_in,
            _step("start etcd", etcd_in, undo=[_step("stop etcd", etcd_out), _wait(False)]),
            _wait(True),
            check,
            _step("start kube-apiserver", api_in, undo=[_step("stop kube-apiserver", api_out)]),
        ]
        rollback = [
            f"mv {man}/kube-apiserver.yaml {man}/etcd.yaml {hold}/  (stop both)",
            f"mv {data} {failed} && mv {old} {data}",
            f"mv {hold}/etcd.yaml {man}/ ; then mv {hold}/kube-apiserver.yaml {man}/",
        ]
        preflight = {
            "must_exist": [data, str(man / "etcd.yaml"), str(man / "kube-apiserver.yaml")],
            "must_not_exist": [restored, old, failed, hold],
        }
    else:
        unit = {"api": target.apiserver_unit, "etcd": target.etcd_unit}
        steps = [
            restore_step,
            _step(
                "stop kube-apiserver",
                ["systemctl", "stop", unit["api"]],
                undo=[_step("start kube-apiserver again", ["systemctl", "start", unit["api"]])],
            ),
            _step(
                "stop etcd",
                ["systemctl", "stop", unit["etcd"]],
                undo=[_step("start etcd again", ["systemctl", "start", unit["etcd"]]), _wait(True)],
            ),
            _wait(False),
            old_aside,
            restored_in,
            _step(
                "start etcd",
                ["systemctl", "start", unit["etcd"]],
                undo=[_step("stop etcd", ["systemctl", "stop", unit["etcd"]]), _wait(False)],
            ),
            _wait(True),
            check,
            _step(
                "start kube-apiserver",
                ["systemctl", "start", unit["api"]],
                undo=[_step("stop kube-apiserver", ["systemctl", "stop", unit["api"]])],
            ),
        ]
        rollback = [
            f"systemctl stop {unit['api']} {unit['etcd']}",
            f"mv {data} {failed} && mv {old} {data}",
            f"systemctl start {unit['etcd']} && systemctl start {unit['api']}",
        ]
        preflight = {"must_exist": [data], "must_not_exist": [restored, old, failed]}
    notes = [
        "run as root on the control-plane node; with several members, restore EVERY member from this "
        "same snapshot with its own --name/--initial-advertise-peer-urls and the full --initial-cluster",
        "after the swap: `kubectl get nodes`, `kubectl get --raw /readyz`; the old data dir stays at "
        f"{old} until you remove it",
    ]
    if not target.peer_url:
        notes.insert(0, "set the target's peer_url (and member_name) to this member's real values first")
    return {
        "mode": target.swap_mode.value,
        "preflight": preflight,
        "steps": steps,
        "rollback": rollback,
        "notes": notes,
    }


def plan_markdown(manifest: Manifest, plan: dict[str, Any]) -> str:
    lines = [f"# etcd control-plane swap for {manifest.id} ({plan['mode']})", ""]
    lines += [f"- {note}" for note in plan["notes"]] + ["", "## Before anything", ""]
    lines += [f"- `{p}` must exist" for p in plan["preflight"]["must_exist"]]
    lines += [f"- `{p}` must NOT exist" for p in plan["preflight"]["must_not_exist"]]
    lines += ["", "## Steps (as root, in order)", ""]
    for i, step in enumerate(plan["steps"], 1):
        cmd = f"`{shlex.join(step['argv'])}`" if step["argv"] else f"({step['kind']})"
        lines.append(f"{i}. {step['step']}: {cmd}")
    lines += ["", "## Rollback", ""] + [f"- `{r}`" for r in plan["rollback"]]
    return "\n".join(lines) + "\n"


def publish(manifest: Manifest, plan: dict[str, Any]) -> None:
    """The plan as a Prefect artifact, for review, when running inside a flow or task."""
    try:
        get_run_context()
    except MissingContextError:
        return
    create_markdown_artifact(
        key="etcd-swap-plan", markdown=plan_markdown(manifest, plan), description="etcd swap plan"
    )


def on_control_plane(target: EtcdTarget) -> bool:
    if target.swap_mode == SwapMode.static_pod:
        return (Path(target.manifests_dir) / "etcd.yaml").is_file()
    return (Path(target.data_dir) / "member").is_dir()


def check_preflight(plan: dict[str, Any]) -> None:
    """Refuse before the first step: a leftover from an earlier attempt would make `mv` nest
    directories or a step fail half-way."""
    missing = [p for p in plan["preflight"]["must_exist"] if not Path(p).exists()]
    leftover = [p for p in plan["preflight"]["must_not_exist"] if Path(p).exists()]
    if missing or leftover:
        raise BadInput(
            "etcd swap refused, nothing was changed: "
            + (f"missing {missing}; " if missing else "")
            + (f"left from an earlier attempt (move them away first) {leftover}" if leftover else "")
        )


class SwapRolledBack(ComponentFailed):
    """The swap failed and every step it took was undone: the control plane runs on its old
    data dir, as before the swap (the restored one is kept aside as -failed-)."""


def _run_step(step: dict[str, Any], target: EtcdTarget, tl: Tools, env: dict[str, str]) -> None:
    if step["kind"] == "run":
        run(step["argv"], {"ETCDCTL_API": "3"}, timeout=1800, name=step["argv"][0])
        return
    if step["kind"] == "check-restored":
        _check_restored(step["expect"], target, tl, env)
        return
    want_up = step["kind"] == "wait-healthy"
    deadline = time.monotonic() + target.swap_wait_seconds
    while True:
        try:
            ctl(tl, target, env, target.endpoints[0], "endpoint", "health", timeout=15)
            up = True
        except ComponentFailed:
            up = False
        if up == want_up:
            return
        if time.monotonic() > deadline:
            raise ComponentFailed(f"etcd {'did not become healthy' if want_up else 'still answers'} "
                                  f"after {target.swap_wait_seconds}s")  # fmt: skip
        time.sleep(1)


def _check_restored(expect: dict[str, Any], target: EtcdTarget, tl: Tools, env: dict[str, str]) -> None:
    try:
        served = check_served(
            tl, target, env, target.endpoints[0], expect["revision"], expect["keys"], expect.get("kv_hash")
        )
    except (ValueError, KeyError, IndexError) as exc:
        raise ComponentFailed(f"could not read the swapped etcd's revision and keys: {exc}") from None
    if not (served["revision"]["ok"] and served["keys"]["ok"] and served["kv_hash"]["ok"]):
        changed = served["revision"].get("changed_since")
        other = "" if served["kv_hash"]["ok"] else " and another key-value state (HashKV) at that revision"
        raise ComponentFailed(
            f"etcd came back with revision {served['revision']['found']} and {served['keys']['found']} "
            f"keys{other}, the backup has revision {expect['revision']} and {expect['keys']} keys"
            + f": is data_dir ({target.data_dir}) the directory this etcd runs from?"
            + (f" Changed since the backup's revision: {changed[:5]}" if changed else "")
        )


def execute(plan: dict[str, Any], target: EtcdTarget, tl: Tools) -> list[str]:
    """Run the plan's steps in order. If one fails, undo every step done, newest first, so the
    control plane is back as it was (old data dir in place, etcd and kube-apiserver running),
    and raise; the restored data dir is kept as `-failed-` for a post-mortem."""
    check_preflight(plan)
    done: list[dict[str, Any]] = []
    with target.client_env() as env:
        for step in plan["steps"]:
            log.warning("etcd swap: %s", step["step"])
            try:
                _run_step(step, target, tl, env)
            except ComponentFailed as exc:
                failure = f"etcd swap failed at '{step['step']}': {str(exc).splitlines()[-1][:300]}"
                log.error("%s; rolling back %d step(s)", failure, len(done))
                undone, outcome = _roll_back(done, target, tl, env)
                raise (SwapRolledBack if undone else ComponentFailed)(f"{failure}. {outcome}") from None
            done.append(step)
    return [s["step"] for s in done]


def _roll_back(
    done: list[dict[str, Any]], target: EtcdTarget, tl: Tools, env: dict[str, str]
) -> tuple[bool, str]:
    """-> (every step undone, what to tell)."""
    undone: list[str] = []
    for undo in [u for step in reversed(done) for u in step["undo"]]:
        log.warning("etcd swap rollback: %s", undo["step"])
        try:
            _run_step(undo, target, tl, env)
        except ComponentFailed as exc:
            return False, (
                f"ROLLBACK FAILED at '{undo['step']}' ({str(exc).splitlines()[-1][:300]}) after: {undone}. "
                "The control plane needs you now: finish by hand from the plan's rollback."
            )
        undone.append(undo["step"])
    return True, (
        "Rolled back, the control plane is as it was before the swap (old data dir in place, etcd "
        f"and kube-apiserver running): {undone}"
    )
