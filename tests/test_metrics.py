"""Metrics against a real Pushgateway: counters survive group replacement, a failure after a
success is visible, and the backup/restore flows push (failures too)."""

from __future__ import annotations

import secrets
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from blocks.monitoring import PushgatewayConfig
from tasks.errors import ComponentFailed
from tasks.metrics import DURATION_BUCKETS, GroupState, next_state, record_run, tracked


def scrape(gw) -> dict[tuple[str, str, str], float]:
    """(sample name, job, component, le) -> value, from the gateway's /metrics."""
    with urllib.request.urlopen(f"{gw.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, s.labels.get("job", ""), s.labels.get("component", ""), s.labels.get("le", ""))
            out[key] = s.value
    return out


def value(samples, name, component, job="klb_backup", le=""):
    return samples.get((name, job, component, le))


@pytest.fixture
def gateway(pushgateway, monkeypatch):
    monkeypatch.setenv("KLB_PUSHGATEWAY_URL", pushgateway.url)
    return pushgateway


def test_a_failure_after_a_success_is_visible_and_counters_carry_over(gateway):
    component = "c" + secrets.token_hex(4)  # a fresh group on the session's gateway
    assert record_run("backup", component, True, 42.0, {"backup_size_bytes": 1234})
    first = scrape(gateway)
    assert value(first, "backup_success_total", component) == 1
    success_ts = value(first, "backup_last_success_timestamp_seconds", component)
    assert success_ts > 0

    assert record_run("backup", component, False, 4000.0)
    after = scrape(gateway)
    assert value(after, "backup_attempts_total", component) == 2
    assert value(after, "backup_success_total", component) == 1
    assert value(after, "backup_failure_total", component) == 1
    assert value(after, "backup_last_status", component) == 0
    # the success timestamp and size survive the replacing push; the failure is newer
    assert value(after, "backup_last_success_timestamp_seconds", component) == success_ts
    assert value(after, "backup_size_bytes", component) == 1234
    assert value(after, "backup_last_failure_timestamp_seconds", component) >= success_ts
    # histogram: one run <= 60 s, both <= +Inf; the 4000 s run lands above 3600
    assert value(after, "backup_duration_seconds_bucket", component, le="60") == 1
    assert value(after, "backup_duration_seconds_bucket", component, le="3600") == 1
    assert value(after, "backup_duration_seconds_bucket", component, le="7200") == 2
    assert value(after, "backup_duration_seconds_bucket", component, le="+Inf") == 2
    assert value(after, "backup_duration_seconds_count", component) == 2


def test_tracked_flow_block_pushes_failures_before_they_propagate(gateway):
    component = "c" + secrets.token_hex(4)
    with pytest.raises(RuntimeError), tracked("backup", component):
        raise RuntimeError("pg_dump exploded")
    samples = scrape(gateway)
    assert value(samples, "backup_failure_total", component) == 1
    assert value(samples, "backup_success_total", component) == 0


def test_backup_flow_pushes_size_interval_and_success(gateway, prefect_server, local_store, tmp_path):
    from blocks.app_state import AppStateStep, AppStateTarget
    from flows.backup import backup_all, backup_component
    from flows.restore import restore_component

    state = tmp_path / "state.txt"
    state.write_text("state v1\n")
    target = AppStateTarget(
        steps=[
            AppStateStep(
                name="state",
                backup_command=["cat", str(state)],
                restore_command=["sh", "-c", f"cat > {state}"],
            )
        ]
    )
    store = local_store()
    before = scrape(gateway)
    # a scheduled backup whose target block is gone fails, and says so to the BackupFailed alert
    with pytest.raises(Exception, match="no app-state target block named"):
        backup_component("app-state", target="klb-deleted-" + secrets.token_hex(4), store=store)
    samples = scrape(gateway)
    failures = value(samples, "backup_failure_total", "app-state")
    assert failures == (value(before, "backup_failure_total", "app-state") or 0) + 1
    assert value(samples, "backup_last_status", "app-state") == 0
    # the same through backup-all, the component asked for by name
    with pytest.raises(ComponentFailed, match="app-state: no app-state target block named"):
        backup_all(components=["app-state"], targets={"app-state": "klb-deleted-x"}, store=store)
    assert value(scrape(gateway), "backup_failure_total", "app-state") == failures + 1
    result = backup_component("app-state", target=target, store=store)
    samples = scrape(gateway)
    assert (
        value(samples, "backup_success_total", "app-state")
        == (value(before, "backup_success_total", "app-state") or 0) + 1
    )
    assert value(samples, "backup_size_bytes", "app-state") == result.size
    assert value(samples, "backup_expected_interval_seconds", "app-state") == 4 * 3600

    restore_component("app-state", target=target, store=store)
    samples = scrape(gateway)
    assert value(samples, "restore_success_total", "app-state", job="klb_restore") >= 1
    assert value(samples, "restore_rto_seconds", "app-state", job="klb_restore") > 0
    assert value(samples, "restore_rpo_seconds", "app-state", job="klb_restore") >= 0

    failures = value(samples, "restore_failure_total", "app-state", job="klb_restore") or 0
    with pytest.raises(Exception, match="malformed backup id"):
        restore_component("app-state", backup_id="nope", target=target, store=store)
    samples = scrape(gateway)
    assert value(samples, "restore_failure_total", "app-state", job="klb_restore") == failures + 1


def test_metrics_are_off_when_unset_and_a_dead_gateway_never_fails_a_run(monkeypatch):
    monkeypatch.delenv("KLB_PUSHGATEWAY_URL", raising=False)
    monkeypatch.delenv("KLB_PUSHGATEWAY_BLOCK", raising=False)
    assert record_run("backup", "etcd", True, 1.0) is False
    dead = PushgatewayConfig(url="http://127.0.0.1:9", timeout_seconds=1)
    assert record_run("backup", "etcd", True, 1.0, cfg=dead) is False


def test_next_state_is_cumulative():
    s = next_state(GroupState(), "backup", True, 10.0, 100.0, {})
    s = next_state(s, "backup", False, 100000.0, 200.0, {})
    assert s.counters == {"attempts": 2, "success": 1, "failure": 1}
    assert s.buckets[DURATION_BUCKETS[0]] == 1 and s.buckets[float("inf")] == 2
    assert s.gauges["backup_last_success_timestamp_seconds"] == 100.0
    assert s.gauges["backup_last_failure_timestamp_seconds"] == 200.0


def test_a_drill_pushes_rto_rpo_per_component(gateway, prefect_server, local_store, tmp_path, monkeypatch):
    from flows.backup import backup_component
    from flows.drill import restore_drill
    from tests.drill.conftest import Prod

    monkeypatch.setenv("KLB_DRILL_TMPDIR", str(tmp_path))
    prod = Prod(tmp_path / "prod")
    store = local_store()
    backup_component("app-state", target=prod.target(), store=store)
    before = scrape(gateway)
    record = restore_drill(components=["app-state"], targets={"app-state": prod.target()}, store=store)
    samples = scrape(gateway)
    app = record.component("app-state")
    success = value(samples, "drill_success_total", "app-state", job="klb_drill")
    assert success == (value(before, "drill_success_total", "app-state", job="klb_drill") or 0) + 1
    assert value(samples, "drill_rto_seconds", "app-state", job="klb_drill") == pytest.approx(app.rto_seconds)
    assert value(samples, "drill_rpo_seconds", "app-state", job="klb_drill") == pytest.approx(
        app.rpo_age_seconds
    )


def test_a_drill_that_misses_its_target_pushes_a_failure(
    gateway, prefect_server, local_store, tmp_path, monkeypatch
):
    """The restore verified, the RTO target was missed: the drill failed, and its metrics say so
    (they counted a success: an alert on drill failures stayed quiet)."""
    from flows.backup import backup_component
    from flows.drill import restore_drill
    from tests.drill.conftest import Prod

    monkeypatch.setenv("KLB_DRILL_TMPDIR", str(tmp_path))
    prod = Prod(tmp_path / "prod")
    store = local_store()
    backup_component("app-state", target=prod.target(), store=store)
    before = scrape(gateway)
    state = restore_drill(
        components=["app-state"],
        targets={"app-state": prod.target()},
        store=store,
        rto_target_minutes=0.0001,
        return_state=True,
    )
    assert state.is_failed() and "RTO" in state.message
    samples = scrape(gateway)
    for counter, added in (("drill_failure_total", 1), ("drill_success_total", 0)):
        was = value(before, counter, "app-state", job="klb_drill") or 0
        assert (value(samples, counter, "app-state", job="klb_drill") or 0) == was + added, counter


def test_a_drill_of_a_configured_component_that_covers_nothing_pushes_a_failure(
    gateway, prefect_server, local_store, tmp_path, monkeypatch
):
    """The component is configured but its drill covered nothing (no drill_restore_command):
    the drill failed for it, and its metrics say so (nothing was pushed: the last success
    stayed the newest, and the drill-failure alert stayed quiet)."""
    from flows.backup import backup_component
    from flows.drill import restore_drill
    from tests.drill.conftest import Prod

    monkeypatch.setenv("KLB_DRILL_TMPDIR", str(tmp_path))
    prod = Prod(tmp_path / "prod")
    store = local_store()
    backup_component("app-state", target=prod.target(drill=False), store=store)
    before = scrape(gateway)
    state = restore_drill(
        components=["app-state"],
        targets={"app-state": prod.target(drill=False)},
        store=store,
        return_state=True,
    )
    assert state.is_failed() and "configured but not verified" in state.message
    samples = scrape(gateway)
    for counter, added in (("drill_failure_total", 1), ("drill_success_total", 0)):
        was = value(before, counter, "app-state", job="klb_drill") or 0
        assert (value(samples, counter, "app-state", job="klb_drill") or 0) == was + added, counter
    assert value(samples, "drill_last_status", "app-state", job="klb_drill") == 0
    # the time the failed drill took, not 0 s (every failure landed in the lowest bucket)
    assert value(samples, "drill_last_duration_seconds", "app-state", job="klb_drill") > 0
