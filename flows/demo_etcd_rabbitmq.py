"""Demo samples for the etcd and RabbitMQ components (used by flows/demo.py).

etcd: a throwaway member on loopback ports with ConfigMap-like keys, stopped at the end.
RabbitMQ: a vhost `klb-demo` on the machine's broker (management API on 127.0.0.1:15672).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx

from blocks.etcd import EtcdTarget
from blocks.rabbitmq import RabbitMQTarget
from tasks.errors import ConfigurationError

RABBITMQ_URL = os.environ.get("KLB_DEMO_RABBITMQ_URL", "http://127.0.0.1:15672")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def etcd(stack: ExitStack, workdir: Path) -> EtcdTarget:
    client, peer = f"http://127.0.0.1:{_port()}", f"http://127.0.0.1:{_port()}"
    d = workdir / "etcd"
    d.mkdir(parents=True, exist_ok=True)
    argv = [
        "etcd", "--name", "demo", "--data-dir", str(d / "data"),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"demo={peer}",
    ]  # fmt: skip
    with open(d / "etcd.log", "wb") as log:
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            raise ConfigurationError("etcd is not installed: run scripts/setup.sh") from None
    stack.callback(_stop, proc)
    deadline = time.monotonic() + 30
    while True:
        with suppress(OSError), urllib.request.urlopen(f"{client}/health", timeout=1):  # noqa: S310
            break
        if time.monotonic() > deadline or proc.poll() is not None:
            raise ConfigurationError(f"the demo etcd did not start: see {d / 'etcd.log'}")
        time.sleep(0.1)
    env = {**os.environ, "ETCDCTL_API": "3"}
    for i, name in enumerate(("lambda-config", "feature-flags", "cold-start-cache")):
        key = f"/registry/configmaps/lambda-system/{name}"
        subprocess.run(["etcdctl", "--endpoints", client, "put", key, f"sample-{i}"], env=env, check=True,
                       capture_output=True)  # fmt: skip
    return EtcdTarget(endpoints=[client], work_dir=str(d))


def _delete_vhost(target: RabbitMQTarget, vhost: str) -> None:
    with suppress(httpx.HTTPError), target.client() as api:
        api.delete(f"/vhosts/{vhost}")


def rabbitmq(stack: ExitStack, workdir: Path) -> RabbitMQTarget:
    target = RabbitMQTarget(url=RABBITMQ_URL, vhosts=["klb-demo"])
    try:
        with target.client() as api:
            api.put("/vhosts/klb-demo", json={}).raise_for_status()
            api.put("/exchanges/klb-demo/lambda.events", json={"type": "topic", "durable": True})
            api.put(
                "/queues/klb-demo/lambda.invocations",
                json={"durable": True, "arguments": {"x-queue-type": "quorum"}},
            )
            api.put("/queues/klb-demo/lambda.dead-letters", json={"durable": True})
            api.post(
                "/bindings/klb-demo/e/lambda.events/q/lambda.invocations", json={"routing_key": "invoke.#"}
            )
            api.put("/policies/klb-demo/dlx", json={"pattern": "^lambda\\.invocations$", "apply-to": "queues",
                    "definition": {"dead-letter-exchange": ""}, "priority": 1})  # fmt: skip
        stack.callback(_delete_vhost, target, "klb-demo")
    except httpx.HTTPError as exc:
        raise ConfigurationError(
            f"RabbitMQ management API at {RABBITMQ_URL} is not usable ({exc}): run scripts/setup.sh"
        ) from None
    return target


DEMO_SETUPS = {"etcd": etcd, "rabbitmq": rabbitmq}
