"""The etcd control-plane swap: an exact plan (every command, in order, with its rollback),
published for review, and executed only with the operator's approval on the control-plane node.
"""

from __future__ import annotations

import logging
import shlex
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError

from blocks.etcd import EtcdTarget, SwapMode
from tasks.errors import BadInput, ComponentFailed
from tasks.models import Manifest
from tasks.proc import run

if TYPE_CHECKING:
    from tasks.components.etcd.tools import Tools

log = logging.getLogger(__name__)


def _step(text: str, argv: list[str] | None = None, kind: str = "run") -> dict[str, Any]:
    return {"step": text, "argv": argv, "kind": kind}


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
    if target.swap_mode == SwapMode.static_pod:
        man, hold = Path(target.manifests_dir), f"{target.manifests_dir}-klb-hold-{tag}"
        steps = [
            _step("restore the verified snapshot into a NEW data dir", restore_argv),
            _step("hold the static pod manifests aside", ["mkdir", "-m", "0700", hold]),
            _step(
                "stop kube-apiserver (kubelet removes its pod)",
                ["mv", str(man / "kube-apiserver.yaml"), hold],
            ),
            _step("stop etcd (kubelet removes its pod)", ["mv", str(man / "etcd.yaml"), hold]),
            _step("wait until etcd no longer answers", kind="wait-down"),
            _step("keep the old data dir for rollback", ["mv", "-T", data, old]),
            _step("put the restored data dir in place", ["mv", "-T", restored, data]),
            _step("start etcd", ["mv", f"{hold}/etcd.yaml", str(man)]),
            _step("wait until etcd is healthy", kind="wait-healthy"),
            _step("start kube-apiserver", ["mv", f"{hold}/kube-apiserver.yaml", str(man)]),
        ]
        rollback = [
            f"mv {man}/kube-apiserver.yaml {man}/etcd.yaml {hold}/  (stop both)",
            f"mv {data} {data}-failed-{tag} && mv {old} {data}",
            f"mv {hold}/etcd.yaml {man}/ ; then mv {hold}/kube-apiserver.yaml {man}/",
        ]
        preflight = {
            "must_exist": [data, str(man / "etcd.yaml"), str(man / "kube-apiserver.yaml")],
            "must_not_exist": [restored, old, hold],
        }
    else:
        steps = [
            _step("restore the verified snapshot into a NEW data dir", restore_argv),
            _step("stop kube-apiserver", ["systemctl", "stop", target.apiserver_unit]),
            _step("stop etcd", ["systemctl", "stop", target.etcd_unit]),
            _step("wait until etcd no longer answers", kind="wait-down"),
            _step("keep the old data dir for rollback", ["mv", "-T", data, old]),
            _step("put the restored data dir in place", ["mv", "-T", restored, data]),
            _step("start etcd", ["systemctl", "start", target.etcd_unit]),
            _step("wait until etcd is healthy", kind="wait-healthy"),
            _step("start kube-apiserver", ["systemctl", "start", target.apiserver_unit]),
        ]
        rollback = [
            f"systemctl stop {target.apiserver_unit} {target.etcd_unit}",
            f"mv {data} {data}-failed-{tag} && mv {old} {data}",
            f"systemctl start {target.etcd_unit} && systemctl start {target.apiserver_unit}",
        ]
        preflight = {"must_exist": [data], "must_not_exist": [restored, old]}
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


def execute(plan: dict[str, Any], target: EtcdTarget, tl: Tools) -> list[str]:
    check_preflight(plan)
    done: list[str] = []
    endpoint = target.endpoints[0]
    with target.client_env() as env:
        for step in plan["steps"]:
            log.warning("etcd swap: %s", step["step"])
            if step["kind"] == "run":
                run(step["argv"], {"ETCDCTL_API": "3"}, timeout=1800, name=step["argv"][0])
            else:
                want_up = step["kind"] == "wait-healthy"
                deadline = time.monotonic() + 300
                while True:
                    try:
                        run(
                            [tl.etcdctl, "--endpoints", endpoint, "endpoint", "health"],
                            env,
                            timeout=15,
                            name="etcdctl",
                        )
                        up = True
                    except ComponentFailed:
                        up = False
                    if up == want_up:
                        break
                    if time.monotonic() > deadline:
                        raise ComponentFailed(
                            f"etcd swap stopped at '{step['step']}' after 300s; done so far: {done}. "
                            f"Roll back by hand: {plan['rollback']}"
                        )
                    time.sleep(2)
            done.append(step["step"])
    return done
