"""etcd against a real etcd 3.4 (the session `etcd` fixture): snapshot, verify, restore aside, drill."""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from blocks.etcd import EtcdTarget, SwapMode
from tasks import proc
from tasks.components import etcd as etcd_component
from tasks.errors import BadInput, ComponentFailed, ConfigurationError, IntegrityError
from tasks.storage.backends import backend_for
from tasks.storage.catalog import list_backups
from tasks.storage.session import backup_session
from tasks.verbs import backup_task, restore_task, verify_task
from tests.procs import descendants, recording_wrapper


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def put_keys(url: str, prefix: str, n: int) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        for i in range(n):
            http.post(
                "/v3/kv/put", json={"key": b64(f"{prefix}{i:03d}"), "value": b64(f"value-{i}")}
            ).raise_for_status()


def read_prefix(url: str, prefix: str) -> tuple[dict[str, str], int]:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    with httpx.Client(base_url=url, timeout=10) as http:
        body = http.post("/v3/kv/range", json={"key": b64(prefix), "range_end": b64(end)}).json()
    kvs = {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
        for kv in body.get("kvs", [])
    }
    return kvs, int(body["header"]["revision"])


def delete_prefix(url: str, prefix: str) -> None:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    with httpx.Client(base_url=url, timeout=10) as http:
        http.post("/v3/kv/deleterange", json={"key": b64(prefix), "range_end": b64(end)}).raise_for_status()


@pytest.fixture
def target(etcd) -> EtcdTarget:
    return EtcdTarget(endpoints=[etcd.url])


def etcd_procs() -> set[int]:
    """This test's throwaway etcd members still running (their names say klb-verify/klb-drill)."""
    ours = descendants().items()
    return {pid for pid, argv in ours if re.search(rb"klb-verify|klb-drill", b" ".join(argv))}


def test_hundred_keys_back_up_delete_restore_into_new_data_dir(etcd, target, any_store):
    store = any_store(encryption_key=SecretStr("etcd-test-key"))
    prefix = f"/klb-test/{os.urandom(4).hex()}/"
    put_keys(etcd.url, prefix, 100)
    manifest = backup_task.fn("etcd", target, store)

    status = manifest.engine["snapshot_status"]
    assert set(status) == {"hash", "revision", "totalKey", "totalSize"}
    assert manifest.engine["keys"] >= 100 and manifest.fingerprint["revision"] == status["revision"]
    assert manifest.objects[0].encryption != "none"

    delete_prefix(etcd.url, prefix)
    assert read_prefix(etcd.url, prefix)[0] == {}

    report = restore_task.fn(manifest, target, store, {})
    checks = report["verified_in_throwaway_member"]
    assert checks["revision"] == {"expected": status["revision"], "found": status["revision"], "ok": True}
    assert checks["keys"]["found"] == manifest.engine["keys"]
    assert report["swap_executed"] is False and report["swap_plan"]["steps"]
    assert read_prefix(etcd.url, prefix)[0] == {}, (
        "a restore without execute_swap must not touch the live etcd"
    )

    # Read the 100 keys back from a member restored into a new data dir, at the recorded revision.
    tl = etcd_component.tools(target)
    with etcd_component.private_dir(None, "test") as tmp:
        snap = etcd_component._download(store, manifest, tmp)
        with etcd_component.throwaway_member(tl, snap, tmp, "klb-test-token") as url:
            kvs, revision = read_prefix(url, prefix)
    assert kvs == {f"{prefix}{i:03d}": f"value-{i}" for i in range(100)}
    assert revision == status["revision"]
    assert not etcd_procs(), "the throwaway member must be stopped"


def test_verify_reruns_snapshot_status_against_the_manifest(target, local_store):
    store = local_store()
    manifest = backup_task.fn("etcd", target, store)
    report = verify_task.fn(manifest, store, target)
    assert report["component_check"]["snapshot_status"] == manifest.engine["snapshot_status"]

    lied = manifest.model_copy(
        update={
            "engine": {
                **manifest.engine,
                "snapshot_status": {**manifest.engine["snapshot_status"], "revision": 1},
            }
        }
    )
    with pytest.raises(IntegrityError, match="differs from its manifest"):
        etcd_component.verify(target, lied, store)


def test_backup_without_encryption_key_warns(target, local_store, caplog):
    with caplog.at_level(logging.WARNING, logger="tasks.components.etcd"):
        backup_task.fn("etcd", target, local_store())
    assert "WITHOUT client-side encryption" in caplog.text


def test_corrupt_snapshot_is_refused_before_anything_changes(target, local_store, tmp_path):
    store = local_store()
    manifest = backup_task.fn("etcd", target, store)
    path = Path(store.path) / manifest.objects[0].key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        verify_task.fn(manifest, store, target)
    with pytest.raises(IntegrityError):
        restore_task.fn(manifest, target, store, {})
    # The swap approved on the control-plane node: refused before its first step, and said so (a
    # 'failed' record that may have changed the target let a rollback swap the safety snapshot in)
    man, live = tmp_path / "node" / "manifests", tmp_path / "node" / "etcd"
    (live / "member").mkdir(parents=True)
    man.mkdir()
    for pod in ("etcd.yaml", "kube-apiserver.yaml"):
        (man / pod).write_text("kind: Pod\n")
    node = EtcdTarget(
        endpoints=target.endpoints, manifests_dir=str(man), data_dir=str(live), peer_url="http://127.0.0.1:1"
    )
    with pytest.raises(IntegrityError) as refused:
        restore_task.fn(manifest, node, store, {"execute_swap": True})
    assert getattr(refused.value, "target_untouched", False)
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == ["etcd", "manifests"]
    assert sorted(p.name for p in man.iterdir()) == ["etcd.yaml", "kube-apiserver.yaml"]
    dest = Path(store.path) / "fetched.db"
    with pytest.raises(IntegrityError):
        etcd_component.download_snapshot(store, manifest.id, dest)
    assert not dest.exists()

    # Checksums fine, content not an etcd database: snapshot status says so.
    with backup_session(store, "etcd") as session:
        session.write("snapshot.db", [os.urandom(64 * 1024)])
        session.engine = dict(manifest.engine)
        garbage = session.commit()
    with pytest.raises(IntegrityError, match="not a valid etcd database"):
        etcd_component.verify(target, garbage, store)
    with pytest.raises(IntegrityError, match="not a valid etcd database"):
        etcd_component.drill(target, garbage, store, "corrupt")
    assert not etcd_procs()


def test_unreachable_endpoint_says_so_and_leaves_no_backup(local_store):
    store = local_store()
    target = EtcdTarget(endpoints=["http://127.0.0.1:9"], dial_timeout_seconds=1)
    with pytest.raises(ConfigurationError, match="etcd is unreachable.*Velero"):
        backup_task.fn("etcd", target, store)
    assert list_backups(store, "etcd") == []
    assert list(backend_for(store).list_keys(store.prefix)) == []


def test_a_snapshot_the_file_tool_refuses_fails_the_backup_and_leaves_nothing(target, local_store, tmp_path):
    """The snapshot's status is read beside its upload: a refusal still fails the backup, with
    no manifest and no object left (the upload that ran beside it is removed)."""
    refuses = tmp_path / "etcdutl"
    refuses.write_text("#!/bin/sh\necho 'snapshot file integrity check failed' >&2\nexit 1\n")
    refuses.chmod(0o755)
    store = local_store()
    with pytest.raises(IntegrityError, match="(?s)not a valid etcd database.*integrity check failed"):
        backup_task.fn("etcd", target.model_copy(update={"etcdutl": str(refuses)}), store)
    assert list_backups(store, "etcd") == []
    assert list(backend_for(store).list_keys(store.prefix)) == []


def test_tls_contents_become_private_files_removed_afterwards():
    target = EtcdTarget(
        cacert=SecretStr("CA PEM"), cert=SecretStr("CERT PEM"), key=SecretStr("KEY PEM"), key_path=None
    )
    with target.client_env() as env:
        paths = [Path(env[v]) for v in ("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY")]
        assert [p.read_text() for p in paths] == ["CA PEM", "CERT PEM", "KEY PEM"]
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in paths)
        assert stat.S_IMODE(paths[0].parent.stat().st_mode) == 0o700
    assert not any(p.exists() for p in paths) and not paths[0].parent.exists()
    with pytest.raises(ValueError, match="not both"):
        EtcdTarget(key=SecretStr("x"), key_path="/etc/k.key")
    assert "KEY PEM" not in repr(target) and "KEY PEM" not in str(target.model_dump())


def test_swap_is_refused_off_the_control_plane_and_the_plan_is_exact(target, local_store, tmp_path):
    store = local_store()
    manifest = backup_task.fn("etcd", target, store)
    away = target.model_copy(
        update={"manifests_dir": str(tmp_path / "manifests"), "data_dir": str(tmp_path / "etcd")}
    )
    with pytest.raises(ConfigurationError, match="not the etcd control-plane node"):
        restore_task.fn(manifest, away, store, {"execute_swap": True})
    with pytest.raises(BadInput):
        restore_task.fn(manifest, away, store, {"execute_swap": "perhaps"})

    plan = etcd_component.swap_plan(
        etcd_component.tools(target),
        away.model_copy(update={"peer_url": "https://10.0.0.1:2380", "member_name": "cp1"}),
        manifest,
        "./snapshot.db",
    )
    argvs = [s["argv"] for s in plan["steps"] if s["argv"]]
    assert argvs[0][:4] == [argvs[0][0], "snapshot", "restore", "./snapshot.db"]
    assert "--initial-cluster" in argvs[0] and "cp1=https://10.0.0.1:2380" in argvs[0]
    moves = [a for a in argvs if a[0] == "mv"]
    assert moves[0][1].endswith("kube-apiserver.yaml"), "the API server stops first"
    assert [str(tmp_path / "etcd"), f"{tmp_path / 'etcd'}-old-{manifest.id}"] == moves[2][-2:]
    assert moves[2][1] == "-T", "never nest the data dir into an existing directory"
    fetched = etcd_component.download_snapshot(store, manifest.id, tmp_path / "snapshot.db")
    assert fetched["snapshot_status"] == manifest.engine["snapshot_status"]
    assert stat.S_IMODE((tmp_path / "snapshot.db").stat().st_mode) == 0o600
    with pytest.raises(BadInput, match="exists"):
        etcd_component.download_snapshot(store, manifest.id, tmp_path / "snapshot.db")
    systemd = etcd_component.swap_plan(
        etcd_component.tools(target), away.model_copy(update={"swap_mode": SwapMode.systemd}), manifest, "x"
    )
    assert ["systemctl", "stop", "kube-apiserver"] in [s["argv"] for s in systemd["steps"]]


def test_drill_restores_checks_and_cleans_up(target, local_store, monkeypatch):
    store = local_store()
    manifest = backup_task.fn("etcd", target, store)
    before = set(os.listdir(tempfile.gettempdir()))
    result = etcd_component.drill(target, manifest, store, "t1")
    assert result["verified"] is True and result["checks"]["revision"]["ok"]
    assert set(result["checks"]["seconds"]) == {
        "fetch",
        "status",
        "restore+start",
        "check",
    }  # the RTO's parts
    assert not [d for d in set(os.listdir(tempfile.gettempdir())) - before if d.startswith("klb-etcd")]
    assert not etcd_procs()

    # a port another process takes between choosing and binding it: restored again on others
    from tasks.components.etcd import member

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = iter([busy.getsockname()[1]])
        monkeypatch.setattr(member, "free_port", lambda: next(ports, None) or proc.free_port())
        assert etcd_component.drill(target, manifest, store, "t2")["verified"] is True
    assert not etcd_procs()


def test_backup_and_restore_through_the_prefect_flows(prefect_server, etcd, target, local_store):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.backup import backup_component
    from flows.restore import restore_component

    store = local_store()
    put_keys(target.endpoints[0], "/klb-flow/", 3)
    target.model_copy(update={"cacert": SecretStr("PEM")}).save("etcd-flow-test", overwrite=True)
    loaded = EtcdTarget.load("etcd-flow-test")
    assert loaded.cacert.get_secret_value() == "PEM" and loaded.endpoints == target.endpoints
    target.save("etcd-flow-test", overwrite=True)
    result = backup_component("etcd", target="etcd-flow-test", store=store)
    assert result.component == "etcd" and result.verified
    report = restore_component("etcd", backup_id=result.id, target=target, store=store)
    assert report["backup_id"] == result.id
    assert report["verified_in_throwaway_member"]["revision"]["ok"] is True

    async def swap_plans() -> list[str]:
        # filtered by key on the server: the session's server holds more artifacts than one page
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["etcd-swap-plan"])),
                sort=ArtifactSort.CREATED_DESC,
            )
            return [a.data for a in found][::-1]

    plans = asyncio.run(swap_plans())
    assert plans and f"swap for {result.id}" in plans[-1] and "kube-apiserver.yaml" in plans[-1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    """An etcd that demands client certificates (like kubeadm's), with a throwaway CA."""
    from sandbox import services

    d = tmp_path_factory.mktemp("etcd-tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "1", "-subj", "/CN=klb-test-ca", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "1", "-extfile", "san.cnf", cwd=d)  # fmt: skip
    port, peer = services.free_port(), services.free_port()
    url = f"https://127.0.0.1:{port}"
    argv = [
        services.need("etcd", "apt-get install etcd-server"),
        "--name", "tls", "--data-dir", str(d / "data"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"tls=http://127.0.0.1:{peer}",
        "--cert-file", str(d / "server.crt"), "--key-file", str(d / "server.key"),
        "--trusted-ca-file", str(d / "ca.crt"), "--client-cert-auth",
    ]  # fmt: skip
    proc, log = services._spawn(argv, d)
    svc = services.Service("etcd-tls", port, proc, d, {"url": url})
    try:
        services.wait_until(lambda: services.port_open(port), 30, "etcd with TLS", proc, log)
        yield svc
    finally:
        svc.stop()


def test_tls_etcd_with_pem_contents_from_secrets(tls_etcd, local_store):
    d = tls_etcd.workdir
    target = EtcdTarget(
        endpoints=[tls_etcd.extra["url"]],
        cacert=SecretStr((d / "ca.crt").read_text()),
        cert=SecretStr((d / "client.crt").read_text()),
        key=SecretStr((d / "client.key").read_text()),
    )
    store = local_store()
    manifest = backup_task.fn("etcd", target, store)
    assert manifest.engine["endpoint"] == tls_etcd.extra["url"] and manifest.engine["keys"] == 0
    assert etcd_component.describe_current_state(target)["members"][0]["version"]
    assert etcd_component.drill(target, manifest, store, "tls")["verified"] is True

    # The same CA without a client certificate: refused, said clearly, nothing stored.
    anonymous = EtcdTarget(
        endpoints=[tls_etcd.extra["url"]], cacert_path=str(d / "ca.crt"), dial_timeout_seconds=2
    )
    with pytest.raises(ConfigurationError, match="unreachable.*client cert"):
        backup_task.fn("etcd", anonymous, local_store(prefix="anon"))
    assert list_backups(local_store(prefix="anon"), "etcd") == []


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory):
    """An etcd with user auth enabled (root and a password), holding 5 keys written before."""
    from sandbox import services

    d, password = tmp_path_factory.mktemp("etcd-auth"), "pw-" + secrets.token_hex(8)
    port, peer = services.free_port(), services.free_port()
    url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
    argv = [services.need("etcd", "apt-get install etcd-server"), "--name", "auth",
            "--data-dir", str(d / "data"), "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"auth={peer_url}"]  # fmt: skip
    proc, log = services._spawn(argv, d)
    svc = services.Service("etcd-auth", port, proc, d, {"url": url, "password": password})
    try:
        services.wait_until(lambda: services.http_ok(f"{url}/health"), 30, "etcd with auth", proc, log)
        put_keys(url, "/registry/secrets/", 5)
        ctl = ["etcdctl", "--endpoints", url]
        for args in (["user", "add", "root", "--new-user-password", password], ["auth", "enable"]):
            subprocess.run(
                [*ctl, *args], env={**os.environ, "ETCDCTL_API": "3"}, check=True, capture_output=True
            )
        yield svc
    finally:
        svc.stop()


def test_etcd_with_auth_is_backed_up_and_checked_with_the_password_on_stdin_only(
    auth_etcd, local_store, tmp_path
):
    """Backup, verify, drill and restore of an etcd with user auth: the snapshot keeps the users,
    so the throwaway member is checked logged in too. etcdctl gets `--user root` in argv and the
    password on stdin: never in its argv or environment."""
    url, password = auth_etcd.extra["url"], auth_etcd.extra["password"]
    log = tmp_path / "log"
    log.mkdir()
    wrapper = recording_wrapper(shutil.which("etcdctl"), tmp_path / "etcdctl", log)
    target = EtcdTarget(endpoints=[url], username="root", password=SecretStr(password), etcdctl=str(wrapper))
    store = local_store()
    manifest = backup_task.fn("etcd", target, store)
    assert manifest.engine["keys"] == 5
    verify_task.fn(manifest, store, target)
    assert etcd_component.drill(target, manifest, store, "auth")["checks"]["keys"]["found"] == 5
    assert restore_task.fn(manifest, target, store, {})["verified_in_throwaway_member"]["keys"]["ok"]
    assert etcd_component.describe_current_state(target)["members"][0]["keys"] == 5

    with pytest.raises(ConfigurationError, match="has auth enabled.*username and password"):
        etcd_component.drill(None, manifest, store, "anon")
    wrong = target.model_copy(update={"password": SecretStr("not-it")})
    with pytest.raises(ConfigurationError, match="refused user 'root'.*password"):
        backup_task.fn("etcd", wrong, local_store(prefix="wrong"))
    assert list_backups(local_store(prefix="wrong"), "etcd") == []

    records = list(log.iterdir())
    assert len(records) > 10 and any("--user" in r.read_text() for r in records if r.suffix == ".argv")
    leaked = [r.name for r in records if password in r.read_text()]
    assert leaked == [], "the password reached an engine's argv or environment"


class StaticPodKubelet:
    """A stand-in for kubelet on a rehearsal control plane: runs a real etcd from `data_dir` while
    `<manifests>/etcd.yaml` exists, stops it when the manifest is moved away."""

    def __init__(self, root: Path, refuse_start: Callable[[], bool] = lambda: False) -> None:
        from sandbox import services

        self.manifests, self.data = root / "manifests", root / "etcd"
        self.manifests.mkdir()
        (self.manifests / "etcd.yaml").write_text("kind: Pod\n")
        (self.manifests / "kube-apiserver.yaml").write_text("kind: Pod\n")
        self.client = f"http://127.0.0.1:{services.free_port()}"
        self.peer = f"http://127.0.0.1:{services.free_port()}"
        self.log = root / "etcd.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.refuse_start = refuse_start  # a pod that cannot start (e.g. crash-loops on its data)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _argv(self) -> list[str]:
        return ["etcd", "--name", "cp1", "--data-dir", str(self.data),
                "--listen-client-urls", self.client, "--advertise-client-urls", self.client,
                "--listen-peer-urls", self.peer, "--initial-advertise-peer-urls", self.peer,
                "--initial-cluster", f"cp1={self.peer}"]  # fmt: skip

    def _loop(self) -> None:
        while not self._stop.is_set():
            running = self.proc is not None and self.proc.poll() is None
            wanted = (self.manifests / "etcd.yaml").exists()
            if wanted and not running and not self.refuse_start():
                with open(self.log, "ab") as out:
                    self.proc = subprocess.Popen(self._argv(), stdout=out, stderr=subprocess.STDOUT)
                self.starts += 1
            elif running and not wanted:
                self.proc.terminate()
                self.proc.wait(timeout=15)
            time.sleep(0.2)

    def target(self, **fields) -> EtcdTarget:
        """The etcd target of this rehearsal control plane."""
        return EtcdTarget(
            endpoints=[self.client],
            data_dir=str(self.data),
            manifests_dir=str(self.manifests),
            member_name="cp1",
            peer_url=self.peer,
            dial_timeout_seconds=1,
            **fields,
        )

    def __enter__(self) -> StaticPodKubelet:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not etcd_component._healthy(self.client):
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


def test_approved_swap_on_a_rehearsal_control_plane(tmp_path, local_store):
    """execute_swap end to end on a rehearsal control plane in a temp dir (never the machine's):
    the restored data dir replaces the live one, etcd restarts with the 100 keys, the old data
    dir is kept for rollback, and the manifests are back where they were."""
    store = local_store(encryption_key=SecretStr("swap-key"))
    with StaticPodKubelet(tmp_path) as kubelet:
        target = kubelet.target()
        put_keys(kubelet.client, "/registry/configmaps/", 100)
        manifest = backup_task.fn("etcd", target, store)
        delete_prefix(kubelet.client, "/registry/configmaps/")
        put_keys(kubelet.client, "/registry/after-backup/", 1)

        report = restore_task.fn(manifest, target, store, {"execute_swap": True})
        assert report["swap_executed"] is True
        assert report["swap_steps_done"] == [s["step"] for s in report["swap_plan"]["steps"]]
        assert kubelet.starts == 2, "etcd was stopped and started again by its manifest"
        kvs, revision = read_prefix(kubelet.client, "/registry/configmaps/")
        assert len(kvs) == 100 and revision == manifest.engine["snapshot_status"]["revision"]
        assert read_prefix(kubelet.client, "/registry/after-backup/")[0] == {}
        # A second approved swap from the same backup finds the kept old data dir: refused first.
        with pytest.raises(BadInput, match="nothing was changed.*earlier attempt"):
            restore_task.fn(manifest, target, store, {"execute_swap": True})
        assert kubelet.starts == 2 and len(read_prefix(kubelet.client, "/registry/configmaps/")[0]) == 100
    old = Path(f"{kubelet.data}-old-{manifest.id}")
    assert (old / "member").is_dir(), "the old data dir is kept for rollback"
    assert not Path(f"{kubelet.data}-restored-{manifest.id}").exists()
    assert {p.name for p in kubelet.manifests.iterdir()} == {"etcd.yaml", "kube-apiserver.yaml"}


def test_a_swap_that_fails_half_way_rolls_back_to_the_live_control_plane(tmp_path, local_store):
    """The restored member never becomes healthy (kubelet cannot start it): the swap undoes every
    step it took, newest first, so the old data dir is live again, etcd answers with the keys it
    had before the swap, both manifests are back, and the restored dir is kept aside as failed."""
    store = local_store()
    original: list[int] = []

    def restored_data_in_place() -> bool:
        return bool(original) and kubelet.data.stat().st_ino != original[0]

    with StaticPodKubelet(tmp_path, refuse_start=restored_data_in_place) as kubelet:
        original.append(kubelet.data.stat().st_ino)
        target = kubelet.target(swap_wait_seconds=5)
        put_keys(kubelet.client, "/registry/configmaps/", 10)
        manifest = backup_task.fn("etcd", target, store)
        put_keys(kubelet.client, "/registry/after-backup/", 1)

        with pytest.raises(ComponentFailed, match="failed at 'wait until etcd is healthy'.*Rolled back"):
            restore_task.fn(manifest, target, store, {"execute_swap": True})
        assert kubelet.data.stat().st_ino == original[0], "the old data dir is live again"
        assert kubelet.starts == 2, "etcd was started again on its own data"
        assert len(read_prefix(kubelet.client, "/registry/after-backup/")[0]) == 1
        assert len(read_prefix(kubelet.client, "/registry/configmaps/")[0]) == 10
    assert {p.name for p in kubelet.manifests.iterdir()} == {"etcd.yaml", "kube-apiserver.yaml"}
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["etcd", f"etcd-failed-{manifest.id}", "etcd.log", "manifests", "store"]), left


def test_a_swap_whose_etcd_comes_back_on_other_data_fails_and_rolls_back(tmp_path, local_store):
    """The target's data_dir is not the directory etcd runs from (a misconfigured target: here a
    copy of the member). The swap moved that directory, etcd came back healthy on its own live
    data, kube-apiserver started, and the report said swap_executed with none of the backup in
    place. Now etcd must serve the backup's revision and key count before kube-apiserver starts,
    or the swap is rolled back."""
    store = local_store()
    with StaticPodKubelet(tmp_path) as kubelet:
        put_keys(kubelet.client, "/registry/configmaps/", 10)
        stale = tmp_path / "etcd-copy"
        shutil.copytree(kubelet.data, stale)
        target = kubelet.target(swap_wait_seconds=10).model_copy(update={"data_dir": str(stale)})
        manifest = backup_task.fn("etcd", target, store)
        delete_prefix(kubelet.client, "/registry/configmaps/")
        put_keys(kubelet.client, "/registry/after-backup/", 1)

        with pytest.raises(ComponentFailed, match="revision.*is data_dir.*Rolled back"):
            restore_task.fn(manifest, target, store, {"execute_swap": True})
        assert (stale / "member").is_dir() and not Path(f"{stale}-old-{manifest.id}").exists()
        assert len(read_prefix(kubelet.client, "/registry/after-backup/")[0]) == 1
    assert {p.name for p in kubelet.manifests.iterdir()} == {"etcd.yaml", "kube-apiserver.yaml"}


def test_a_swap_whose_etcd_serves_other_data_at_the_same_revision_fails_and_rolls_back(tmp_path, local_store):
    """The check after the swap compared revision and key count only: an etcd that came back on
    other data with as many keys at the same revision (here the target's own live data, its
    data_dir a stale copy, and a backup of another member of that shape) passed, and the report
    said swap_executed with none of the backup's values in place. Now the whole key-value state at
    the backup's revision (etcd's HashKV, recorded at backup) must match too."""
    store = local_store()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with StaticPodKubelet(tmp_path / "a") as live, StaticPodKubelet(tmp_path / "b") as other:
        put_keys(live.client, "/registry/configmaps/", 10)
        with httpx.Client(base_url=other.client, timeout=10) as http:
            for i in range(10):  # the same keys, other values: the same revision and key count
                http.post("/v3/kv/put", json={"key": b64(f"/registry/configmaps/{i:03d}"),
                                              "value": b64(f"other-{i}")}).raise_for_status()  # fmt: skip
        manifest = backup_task.fn("etcd", other.target(), store)
        stale = tmp_path / "a" / "etcd-copy"
        shutil.copytree(live.data, stale)
        target = live.target(swap_wait_seconds=10).model_copy(update={"data_dir": str(stale)})
        assert (
            read_prefix(live.client, "/registry/configmaps/")[1]
            == manifest.engine["snapshot_status"]["revision"]
        )

        with pytest.raises(ComponentFailed, match="key-value state.*is data_dir.*Rolled back"):
            restore_task.fn(manifest, target, store, {"execute_swap": True})
        assert (stale / "member").is_dir() and not Path(f"{stale}-old-{manifest.id}").exists()
        assert read_prefix(live.client, "/registry/configmaps/")[0]["/registry/configmaps/000"] == "value-0"
    assert manifest.engine["kv_hash"]["compact_revision"] == -1, "never compacted"
