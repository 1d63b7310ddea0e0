"""Throwaway real servers for the test session, on 127.0.0.1, under .run/ in the project.

Each starter returns a running service or raises ServiceMissing with how to get it: a missing
service fails the run, it never skips.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.proc import free_port

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"


class ServiceMissing(RuntimeError):
    pass


class PortTaken(ServiceMissing):
    """The free port a server was given was taken before it bound it (by another process, or
    another xdist worker's server): the start is tried again on other ports."""

    def __init__(self, message: str, workdir: Path):
        super().__init__(message)
        self.workdir = workdir


BIND_TRIES = 3
_BUSY = ("address already in use", "could not bind")


def on_other_ports_if_taken(start: Callable[..., Service]) -> Callable[..., Service]:
    """Run `start` again, up to BIND_TRIES times, when its server found its port taken; its
    half-made directory (an initdb'd data dir, a log) is removed first, so the new try starts
    clean rather than reusing a cluster configured for the old port."""

    @functools.wraps(start)
    def starter(*args, **kwargs) -> Service:
        for attempt in range(1, BIND_TRIES + 1):
            try:
                return start(*args, **kwargs)
            except PortTaken as exc:
                if attempt == BIND_TRIES:
                    raise
                shutil.rmtree(exc.workdir, ignore_errors=True)
        raise AssertionError("unreachable")

    return starter


def need(binary: str, how: str) -> str:
    path = shutil.which(binary) or (str(VENV_BIN / binary) if (VENV_BIN / binary).exists() else None)
    if not path:
        raise ServiceMissing(f"{binary} is not installed: {how} (`make test` does this via scripts/setup.sh)")
    return path


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    message = f"{what} did not become ready in {timeout}s\n{tail}"
    if log and proc is not None and proc.poll() is not None and any(b in tail.lower() for b in _BUSY):
        raise PortTaken(message, log.parent)
    raise ServiceMissing(message)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
        return resp.status < 500


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen | None
    workdir: Path
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _spawn(argv: list[str], workdir: Path, env: dict | None = None, user: str | None = None):
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    return proc, workdir / "server.log"


def session_dir(name: str) -> Path:
    path = RUN_DIR / f"test-{os.getpid()}" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@on_other_ports_if_taken
def start_moto() -> Service:
    binary = need("moto_server", "pip install 'moto[server]'")
    port, workdir = free_port(), session_dir("moto")
    proc, log = _spawn([binary, "-H", "127.0.0.1", "-p", str(port)], workdir)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/moto-api/"), 30, "moto S3 server", proc, log)
    return Service("moto", port, proc, workdir)


def pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise ServiceMissing("PostgreSQL server binaries are missing: apt-get install postgresql")
    return Path(found[-1]).parent


@on_other_ports_if_taken
def start_postgres(password: str, name: str = "pg", extra_conf: dict[str, str] | None = None) -> Service:
    """An isolated cluster: superuser 'postgres' with `password`, scram over TCP on loopback."""
    bindir = pg_bindir()
    port, workdir = free_port(), session_dir(name)
    data, sock = workdir / "data", workdir / "sock"
    sock.mkdir(exist_ok=True)
    pwfile = workdir / "pwfile"
    pwfile.write_text(password + "\n")
    shutil.chown(workdir, "postgres")
    shutil.chown(sock, "postgres")
    shutil.chown(pwfile, "postgres")
    pwfile.chmod(0o600)
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
        check=True,
        capture_output=True,
    )
    pwfile.unlink()
    conf = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(port),
        "unix_socket_directories": f"'{sock}'",
        "fsync": "off",
        "max_wal_senders": "5",
        "wal_level": "replica",
        **(extra_conf or {}),
    }
    with open(data / "postgresql.conf", "a") as fh:
        fh.writelines(f"{k} = {v}\n" for k, v in conf.items())
    with open(data / "pg_hba.conf", "a") as fh:
        fh.write("host replication all 127.0.0.1/32 scram-sha-256\n")
    proc, log = _spawn([str(bindir / "postgres"), "-D", str(data)], workdir, user="postgres")
    wait_until(lambda: port_open(port), 30, "PostgreSQL", proc, log)
    # the port opens before recovery ends ("the database system is starting up")
    ready = [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
    wait_until(lambda: subprocess.run(ready).returncode == 0, 30, "PostgreSQL", proc, log)
    return Service(
        name, port, proc, workdir, {"password": password, "data": data, "socket": sock, "bindir": bindir}
    )


@on_other_ports_if_taken
def start_etcd() -> Service:
    binary = need("etcd", "apt-get install etcd-server etcd-client")
    port, peer, workdir = free_port(), free_port(), session_dir("etcd")
    argv = [
        binary,
        "--name",
        "n1",
        "--data-dir",
        str(workdir / "data"),
        "--listen-client-urls",
        f"http://127.0.0.1:{port}",
        "--advertise-client-urls",
        f"http://127.0.0.1:{port}",
        "--listen-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-cluster",
        f"n1=http://127.0.0.1:{peer}",
    ]
    proc, log = _spawn(argv, workdir)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 30, "etcd", proc, log)
    return Service("etcd", port, proc, workdir)


@on_other_ports_if_taken
def start_pushgateway() -> Service:
    binary = need("prometheus-pushgateway", "apt-get install prometheus-pushgateway")
    port, workdir = free_port(), session_dir("pushgateway")
    proc, log = _spawn([binary, f"--web.listen-address=127.0.0.1:{port}"], workdir)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"), 30, "pushgateway", proc, log)
    return Service("pushgateway", port, proc, workdir)


def _answers(url: str) -> bool:
    """Any HTTP answer (a 401 included) means the server is up."""
    try:
        return http_ok(url)
    except urllib.error.HTTPError:
        return True


def rabbitmq_management(url: str = "http://127.0.0.1:15672") -> Service:
    """The machine's RabbitMQ (not throwaway): its management API must answer."""
    try:
        wait_until(lambda: _answers(f"{url}/api/overview"), 10, "rabbitmq")
        urllib.request.urlopen(f"{url}/", timeout=2)  # noqa: S310
    except Exception as exc:
        raise ServiceMissing(
            f"RabbitMQ management API not reachable at {url} ({exc}): start RabbitMQ "
            "(`rabbitmq-server -detached`) and `rabbitmq-plugins enable rabbitmq_management`"
        ) from None
    return Service("rabbitmq", int(url.rsplit(":", 1)[1]), None, RUN_DIR, {"url": url})
