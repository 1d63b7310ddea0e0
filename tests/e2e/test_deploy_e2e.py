"""End to end through a real Prefect server: create blocks with the setup script, `prefect deploy
--all`, trigger a backup deployment four ways, run a worker, and find Completed runs that never
overlapped and verified manifests in the store. The process pool stands in for the Kubernetes pool
(no cluster here); the Kubernetes pool is created with our base job template on the same server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from tests import deployspec as spec
from tests.deployspec import ROOT
from tests.procs import stop

BACKUP = "backup-component/backup-app-state"
ENABLE = [str(ROOT / ".venv/bin/python"), str(ROOT / "scripts/enable_schedules.py")]


def cli(e2e: dict, *args: str, timeout: float = 120, env: dict | None = None) -> str:
    out = subprocess.run(
        [str(ROOT / ".venv/bin/prefect"), *args],
        cwd=ROOT,
        env={**e2e["env"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, (
        f"prefect {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out.stdout


# Prefect's own client retries these: the server answers 503 when its SQLite database is busy
# (the whole suite runs beside it), and the request changed nothing.
RETRY_STATUS = {429, 502, 503}


def api(e2e: dict, method: str, path: str, **kwargs) -> httpx.Response:
    for attempt in range(6):
        resp = httpx.request(method, e2e["api"] + path, timeout=30, **kwargs)
        if resp.status_code not in RETRY_STATUS or attempt == 5:
            break
        time.sleep(0.5 * 2**attempt)
    resp.raise_for_status()
    return resp


def write_process_pool_variant(e2e: dict, path: Path) -> None:
    """prefect.yaml as is, but on the process pool and with the code where it is checked out."""
    doc = spec.load_yaml()
    doc["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    doc.pop("definitions")
    for dep in doc["deployments"]:
        dep["work_pool"] = {"name": e2e["pool"], "work_queue_name": "default"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(scope="module")
def deployed(e2e, tmp_path_factory) -> dict:
    here = tmp_path_factory.mktemp("e2e")
    source, restored = here / "app-data", here / "restored"
    source.mkdir()
    restored.mkdir()
    (source / "sessions.json").write_text(json.dumps({"user": "ada", "cart": [1, 2, 3]}))
    blocks = {
        "blocks": [
            {"type": "klb-local-store", "name": "e2e", "data": {"path": str(e2e["store_dir"])}},
            {
                "type": "klb-app-state-target",
                "name": "e2e",
                "data": {
                    "steps": [
                        {
                            "name": "sessions",
                            "backup_command": ["tar", "-c", "-C", str(source), "."],
                            "restore_command": ["tar", "-x", "-C", str(restored)],
                        }
                    ]
                },
            },
        ]
    }
    (here / "blocks.yaml").write_text(yaml.safe_dump(blocks))
    setup = [
        str(ROOT / ".venv/bin/python"),
        str(ROOT / "scripts/create_blocks.py"),
        "-f",
        str(here / "blocks.yaml"),
    ]
    made = subprocess.run(setup, env=e2e["env"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr  # idempotency: tests/test_deployments_setup.py
    assert "created   klb-app-state-target/e2e" in made.stdout, made.stdout

    cli(e2e, "work-pool", "create", e2e["pool"], "--type", "process")
    variant = here / "prefect.e2e.yaml"
    write_process_pool_variant(e2e, variant)
    cli(e2e, "--no-prompt", "deploy", "--all", "--prefect-file", str(variant), timeout=900)
    deps = api(e2e, "POST", "/deployments/filter", json={"limit": 200}).json()
    return {"deployments": {d["name"]: d for d in deps}, "restored": restored, "here": here}


def test_every_deployment_of_prefect_yaml_is_on_the_server(e2e, deployed):
    assert set(deployed["deployments"]) == {d["name"] for d in spec.deployments()}
    for dep in spec.deployments():
        server = deployed["deployments"][dep["name"]]
        assert server["parameters"] == (dep.get("parameters") or {})
        assert set(server["tags"]) == set(dep["tags"])
        limit = dep.get("concurrency_limit")
        if limit:
            assert server["global_concurrency_limit"]["limit"] == limit["limit"], dep["name"]
            assert server["concurrency_options"]["collision_strategy"] == limit["collision_strategy"]


def _server_schedule(deployment: dict) -> dict:
    (item,) = deployment["schedules"]
    return item["schedule"]


def _scheduled_runs(e2e: dict, deployment_id: str) -> list[dict]:
    return api(
        e2e,
        "POST",
        "/flow_runs/filter",
        json={
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 20,
        },
    ).json()


def test_no_backup_schedule_fires_until_its_component_has_a_target(e2e, deployed):
    """After `deploy --all` no backup is scheduled; the one set-up step (scripts/enable_schedules.py)
    turns on exactly the components with a target block (here app-state), and the server's
    scheduler then makes runs for that one only."""
    names = [d["name"] for d in spec.scheduled_backups(spec.deployments())]
    assert all(not s["active"] for n in names for s in deployed["deployments"][n]["schedules"])
    step = [*ENABLE, "--config", str(_pod_config(deployed))]
    out = subprocess.run(step, env=e2e["env"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "backup-app-state: active" in out.stdout and "backup-etcd: paused" in out.stdout
    deps = {d["name"]: d for d in api(e2e, "POST", "/deployments/filter", json={"limit": 200}).json()}
    active = {n for n in names if any(s["active"] for s in deps[n]["schedules"])}
    assert active == {"backup-app-state"}
    deadline = time.monotonic() + 60
    while not _scheduled_runs(e2e, deps["backup-app-state"]["id"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _scheduled_runs(e2e, deps["backup-app-state"]["id"])
    for name in set(names) - active:
        assert _scheduled_runs(e2e, deps[name]["id"]) == [], f"{name} has no target but is scheduled"
    again = subprocess.run(step, env=e2e["env"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout == out.stdout  # idempotent


def _pod_config(deployed) -> Path:
    """klb-config as this module's worker has it (KLB_APP_STATE_TARGET=e2e, like its env)."""
    shipped = yaml.safe_load((ROOT / "deployments/k8s/config.yaml").read_text())
    shipped["data"] = {**shipped["data"], "KLB_STORE": "klb-local-store/e2e", "KLB_APP_STATE_TARGET": "e2e"}
    path = deployed["here"] / "klb-config.yaml"
    path.write_text(yaml.safe_dump(shipped))
    return path


def test_a_schedule_is_turned_on_only_when_the_flow_pods_find_its_target(e2e, deployed):
    """The flow pods find a component's target by the block name their ConfigMap klb-config gives
    (KLB_<COMPONENT>_TARGET): a target block under another name made a schedule whose every run
    failed 'no postgres target'. The script asks what the pods would load, under klb-config's
    environment (the shipped deployments/k8s/config.yaml unless --config names another)."""
    blocks = {"blocks": [{"type": "klb-postgres-target", "name": "pg-elsewhere", "data": {"host": "db"}}]}
    (deployed["here"] / "pg.yaml").write_text(yaml.safe_dump(blocks))
    setup = [str(ROOT / ".venv/bin/python"), str(ROOT / "scripts/create_blocks.py"), "-f", "pg.yaml"]
    made = subprocess.run(
        setup, cwd=deployed["here"], env=e2e["env"], capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    try:
        for config in ([], ["--config", str(_pod_config(deployed))]):
            out = subprocess.run(
                [*ENABLE, *config], env=e2e["env"], capture_output=True, text=True, timeout=120
            )
            assert out.returncode == 0, out.stderr
            assert "backup-postgres: paused" in out.stdout, out.stdout
            assert "'production'" in out.stdout  # the name klb-config gives, and no block has
            deps = {d["name"]: d for d in api(e2e, "POST", "/deployments/filter", json={"limit": 200}).json()}
            assert not any(s["active"] for s in deps["backup-postgres"]["schedules"])
        assert "backup-app-state: active" in out.stdout
    finally:
        api(e2e, "DELETE", f"/block_documents/{_block_id(e2e, 'klb-postgres-target', 'pg-elsewhere')}")
        again = [*ENABLE, "--config", str(_pod_config(deployed))]
        subprocess.run(again, env=e2e["env"], capture_output=True, timeout=120, check=True)


def _block_id(e2e: dict, slug: str, name: str) -> str:
    return api(e2e, "GET", f"/block_types/slug/{slug}/block_documents/name/{name}").json()["id"]


def test_server_schedules_match_the_backup_table(e2e, deployed):
    """The schedules as the server stored them give the table's intervals; and the server's own
    scheduler has created the upcoming runs at those intervals."""
    deps = [deployed["deployments"][d["name"]] for d in spec.scheduled_backups(spec.deployments())]
    as_stored = [
        {
            "name": d["name"],
            "entrypoint": spec.BACKUP_ENTRYPOINT,
            "parameters": d["parameters"],
            "schedules": [_server_schedule(d)],
        }
        for d in deps
    ]
    assert spec.schedule_mismatches(as_stored, spec.table()) == []

    deadline = time.monotonic() + 60
    # the server's scheduler makes runs for the active ones (enable_schedules.py turned them on)
    current = {d["name"]: d for d in api(e2e, "POST", "/deployments/filter", json={"limit": 200}).json()}
    for dep in [
        current[d["name"]] for d in deps if any(s["active"] for s in current[d["name"]]["schedules"])
    ]:
        every = spec.table()[dep["parameters"]["component"]].interval
        while True:
            runs = _scheduled_runs(e2e, dep["id"])
            if len(runs) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(runs) >= 3, f"the scheduler made {len(runs)} runs for {dep['name']}"
        starts = [datetime.fromisoformat(r["expected_start_time"]) for r in runs]
        assert {b - a for a, b in zip(starts, starts[1:], strict=False)} == {every}, dep["name"]


def test_server_drill_schedule_is_first_mondays(e2e, deployed):
    drill = deployed["deployments"]["restore-drill-monthly"]
    schedule = _server_schedule(drill)
    assert (schedule["cron"], schedule["day_or"], schedule["timezone"]) == ("0 2 1-7 * 1", False, "UTC")
    runs = spec.next_runs(schedule, 12, start=datetime.now(UTC))
    assert len(runs) == 12 and spec.first_monday_problems(runs) == []


def test_kubernetes_pool_accepts_the_base_job_template(e2e):
    template = ROOT / "deployments/k8s/base-job-template.json"
    cli(
        e2e,
        "work-pool",
        "create",
        "klb-kubernetes",
        "--type",
        "kubernetes",
        "--base-job-template",
        str(template),
    )
    pool = api(e2e, "GET", "/work_pools/klb-kubernetes").json()
    assert pool["type"] == "kubernetes"
    assert pool["base_job_template"] == json.loads(template.read_text())


FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _run_with_a_worker(e2e: dict, ids: set[str]) -> list[dict]:
    """One `prefect worker start` on the pool until every run of `ids` is final, then stopped.
    The deployment's limit (one slot) lets one run in at a time; the others wait their turn and
    the same worker picks them up when they are due again (it asks every second). A `--run-once`
    worker per turn, as before, started Prefect and the worker anew for each run."""
    env = {
        **e2e["env"],
        "KLB_STORE": "klb-local-store/e2e",
        "KLB_APP_STATE_TARGET": "e2e",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    log = e2e["workdir"] / "worker.log"
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [str(ROOT / ".venv/bin/prefect"), "worker", "start", "--pool", e2e["pool"]],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 600
        while True:
            runs = [api(e2e, "GET", f"/flow_runs/{i}").json() for i in ids]
            if all(r["state"]["type"] in FINAL for r in runs) or time.monotonic() > deadline:
                return runs
            assert worker.poll() is None, f"the worker exited:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
    finally:
        stop(worker)


def test_backup_deployment_runs_through_a_worker(e2e, deployed):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks.store import LocalStore
    from tasks.storage.catalog import list_backups, verify_backup

    dep = deployed["deployments"]["backup-app-state"]
    # 1. CLI
    out = cli(e2e, "deployment", "run", BACKUP)
    by_cli = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
    with temporary_settings({PREFECT_API_URL: e2e["api"]}):
        # 2. Python, not waiting (timeout=0); the idempotency key makes a retry of the call harmless
        key = f"change-1234-{uuid.uuid4()}"
        by_python = run_deployment(BACKUP, timeout=0, idempotency_key=key)
        again = run_deployment(BACKUP, timeout=0, idempotency_key=key)
        assert again.id == by_python.id
    # 3. a notebook: call the flow function itself, with blocks by name. Its own process, as a
    # notebook kernel is: in this one, Prefect's clients stay bound to the session's test server.
    notebook = (
        "from flows.backup import backup_component\n"
        "r = backup_component('app-state', target='e2e', store='klb-local-store/e2e')\n"
        "assert r.verified, r\n"
        "print('NOTEBOOK-BACKUP', r.id)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", notebook], env=e2e["env"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "NOTEBOOK-BACKUP app-state-" in done.stdout, done.stderr[-2000:]
    notebook_backup_id = done.stdout.split("NOTEBOOK-BACKUP ", 1)[1].split()[0]
    # 4. REST
    found = api(e2e, "GET", f"/deployments/name/{BACKUP}").json()
    assert found["id"] == dep["id"]
    body = {"parameters": {}, "idempotency_key": f"rest-{uuid.uuid4()}"}
    by_rest = api(e2e, "POST", f"/deployments/{found['id']}/create_flow_run", json=body).json()["id"]
    ids = {by_cli, str(by_python.id), by_rest}
    assert len(ids) == 3

    runs = _run_with_a_worker(e2e, ids)
    states = {r["id"]: (r["state"]["type"], r["state"]["message"]) for r in runs}
    assert {s for s, _ in states.values()} == {"COMPLETED"}, states

    # the deployment's limit (1, ENQUEUE) held the others back rather than running them at once
    histories = [api(e2e, "GET", "/flow_run_states/", params={"flow_run_id": i}).json() for i in ids]
    waited = [
        i
        for i, h in zip(ids, histories, strict=True)
        if any(s["name"] == "AwaitingConcurrencySlot" for s in h)
    ]
    assert waited, "no run ever waited for the deployment's concurrency slot"
    spans = sorted(
        (datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"])) for r in runs
    )
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - timedelta(milliseconds=1), "two backups of one component overlapped"

    store = LocalStore(path=str(e2e["store_dir"]))
    # ours only: the schedule an earlier test turned on makes a run at :45 of every fourth hour,
    # which the worker runs too when this test crosses that minute
    manifests = [
        m
        for m in list_backups(store, "app-state")
        if m.labels.get("flow_run_id") in ids or m.id == notebook_backup_id
    ]
    assert len(manifests) == 4  # three deployment runs and the notebook call
    for manifest in manifests:
        assert manifest.verified_at is not None
        verify_backup(store, manifest)
    assert notebook_backup_id in {m.id for m in manifests}
