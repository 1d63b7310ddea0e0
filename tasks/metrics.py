"""Run metrics pushed to a Prometheus Pushgateway: one group per (job, component).

Names follow the runbook: backup_attempts_total, backup_success_total, backup_duration_seconds,
backup_size_bytes, backup_last_success_timestamp_seconds, plus what the alerts need
(backup_failure_total, backup_last_failure_timestamp_seconds, backup_expected_interval_seconds,
restore_/verify_/drill_ equivalents, restore_/drill_ rto/rpo gauges). Jobs: klb_backup,
klb_verify, klb_restore, klb_drill, klb_replication; the grouping key adds `component`.

A push replaces the whole group, so the group itself is the state: before pushing, the current
group is read back from the gateway (/metrics), counters and histogram buckets are carried
forward plus this run, and gauges not set by this run (e.g. the last success time when this run
failed) are kept. If the gateway restarts without persistence, counters start again from zero,
which Prometheus treats as an ordinary counter reset (rate/increase stay right); the alerts use
the timestamp gauges, not counter values. Two runs of the same component finishing within the
same instant can lose one increment (read-modify-write); the schedules never overlap a
component with itself, and the timestamps stay right either way.

Pushing never fails a run: a gateway that is down is logged as a warning.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import basic_auth_handler, default_handler, push_to_gateway
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from blocks.monitoring import PushgatewayConfig
from tasks.errors import NotFound

log = logging.getLogger(__name__)

# minutes to hours: a 30 s etcd snapshot and an 8 h volume backup both land in a real bucket
DURATION_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)
KINDS = ("backup", "verify", "restore", "drill", "replication")
COUNTERS = ("attempts", "success", "failure")


def job_name(kind: str) -> str:
    return f"klb_{kind}"


def pushgateway() -> PushgatewayConfig | None:
    """$KLB_PUSHGATEWAY_URL, else the block named by $KLB_PUSHGATEWAY_BLOCK, else None (off)."""
    url = os.environ.get("KLB_PUSHGATEWAY_URL")
    if url:
        return PushgatewayConfig(url=url)
    name = os.environ.get("KLB_PUSHGATEWAY_BLOCK")
    if name:
        return PushgatewayConfig.load(name)
    return None


def _handler(cfg: PushgatewayConfig):
    if cfg.username and cfg.password:
        password = cfg.password.get_secret_value()

        def handler(url, method, timeout, headers, data):
            return basic_auth_handler(url, method, timeout, headers, data, cfg.username, password)

        return handler
    return default_handler


@dataclass
class GroupState:
    counters: dict[str, float] = field(default_factory=dict)  # "attempts" -> value
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    hist_sum: float = 0.0
    hist_count: float = 0.0
    gauges: dict[str, float] = field(default_factory=dict)  # full metric name -> value


def read_group(cfg: PushgatewayConfig, kind: str, component: str) -> GroupState:
    """The group as the gateway serves it now (empty if it has none)."""
    req = urllib.request.Request(cfg.url.rstrip("/") + "/metrics")  # noqa: S310 - configured URL
    if cfg.username and cfg.password:
        import base64

        token = base64.b64encode(f"{cfg.username}:{cfg.password.get_secret_value()}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=cfg.timeout_seconds) as resp:  # noqa: S310
        text = resp.read().decode()
    return parse_group(text, kind, component)


def parse_group(text: str, kind: str, component: str) -> GroupState:
    state = GroupState()
    job = job_name(kind)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("job") != job or s.labels.get("component") != component:
                continue
            name = s.name
            if not name.startswith(kind + "_"):
                continue  # push_time_seconds and friends belong to the gateway
            if name == f"{kind}_duration_seconds_bucket":
                state.buckets[float(s.labels["le"])] = s.value
            elif name == f"{kind}_duration_seconds_sum":
                state.hist_sum = s.value
            elif name == f"{kind}_duration_seconds_count":
                state.hist_count = s.value
            elif name.endswith("_total") and name[len(kind) + 1 : -len("_total")] in COUNTERS:
                state.counters[name[len(kind) + 1 : -len("_total")]] = s.value
            elif name == f"{kind}_duration_seconds_created" or name.endswith("_created"):
                continue
            else:
                state.gauges[name] = s.value
    return state


def next_state(
    prev: GroupState, kind: str, ok: bool, duration: float, now: float, gauges: dict[str, float]
) -> GroupState:
    """Pure: the group after one more run."""
    state = GroupState(
        counters={c: prev.counters.get(c, 0.0) for c in COUNTERS},
        buckets={le: prev.buckets.get(le, 0.0) for le in (*DURATION_BUCKETS, float("inf"))},
        hist_sum=prev.hist_sum + duration,
        hist_count=prev.hist_count + 1,
        gauges=dict(prev.gauges),
    )
    state.counters["attempts"] += 1
    state.counters["success" if ok else "failure"] += 1
    for le in state.buckets:
        if duration <= le:
            state.buckets[le] += 1
    state.gauges[f"{kind}_last_attempt_timestamp_seconds"] = now
    state.gauges[f"{kind}_last_status"] = 1.0 if ok else 0.0
    state.gauges[f"{kind}_last_{'success' if ok else 'failure'}_timestamp_seconds"] = now
    state.gauges[f"{kind}_last_duration_seconds"] = duration
    state.gauges.update(gauges)
    return state


class _Snapshot:
    def __init__(self, kind: str, state: GroupState) -> None:
        self.kind, self.state = kind, state

    def collect(self) -> Iterator[Any]:
        k, s = self.kind, self.state
        for c in COUNTERS:
            yield CounterMetricFamily(f"{k}_{c}", f"{k} runs ({c})", value=s.counters.get(c, 0.0))
        buckets = [(_le(le), s.buckets[le]) for le in sorted(s.buckets)]
        yield HistogramMetricFamily(
            f"{k}_duration_seconds", f"{k} run duration", buckets=buckets, sum_value=s.hist_sum
        )
        for name, value in sorted(s.gauges.items()):
            yield GaugeMetricFamily(name, name.replace("_", " "), value=value)


def _le(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def record_run(
    kind: str,
    component: str,
    ok: bool,
    duration: float,
    gauges: dict[str, float] | None = None,
    cfg: PushgatewayConfig | None = None,
) -> bool:
    """Push one run's outcome. Returns whether it was pushed; never raises."""
    try:
        cfg = cfg or pushgateway()
        if cfg is None:
            return False
        prev = read_group(cfg, kind, component)
        state = next_state(prev, kind, ok, duration, time.time(), dict(gauges or {}))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(kind, state))
        push_to_gateway(
            cfg.url,
            job=job_name(kind),
            registry=registry,
            grouping_key={"component": component},
            timeout=cfg.timeout_seconds,
            handler=_handler(cfg),
        )
        return True
    except Exception as exc:  # metrics must never break a backup or a restore
        log.warning("could not push %s metrics for %s: %s", kind, component, exc)
        return False


def expected_interval(component: str) -> dict[str, float]:
    from tasks.table import policy

    try:
        return {"backup_expected_interval_seconds": policy(component).interval.total_seconds()}
    except NotFound:
        return {}


@dataclass
class Run:
    """What a tracked block may add: gauges such as backup_size_bytes or restore_rpo_seconds."""

    kind: str
    gauges: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@contextmanager
def tracked(kind: str, component: str) -> Iterator[Run]:
    """Record the block as one run: success if it returns, failure if it raises (try/finally,
    so a failure is pushed before it propagates)."""
    run = Run(kind)
    if kind == "backup":
        run.gauges.update(expected_interval(component))
    ok = False
    try:
        yield run
        ok = True
    finally:
        if ok and kind in ("restore", "drill"):
            run.gauges.setdefault(f"{kind}_rto_seconds", run.elapsed)
        if not ok:  # size/RPO of a failed run are not facts about the data
            run.gauges = {k: v for k, v in run.gauges.items() if k.endswith("interval_seconds")}
        record_run(kind, component, ok, run.elapsed, run.gauges)


def record_drill(
    component: str, ok: bool, duration: float, rto_seconds: float | None, rpo_seconds: float | None
) -> bool:
    """For the restore drill (flows/drill.py): one drill outcome per component. `duration`: the
    time the component's drill took (its RTO when verified); the RTO/RPO gauges only when ok."""
    gauges = {"drill_rto_seconds": rto_seconds} if ok and rto_seconds is not None else {}
    if ok and rpo_seconds is not None:
        gauges["drill_rpo_seconds"] = rpo_seconds
    return record_run("drill", component, ok, duration, gauges)
