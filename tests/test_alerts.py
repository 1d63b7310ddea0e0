"""Alert rules: promtool checks both files and runs the rule unit tests; the runbook's own
BackupFailed rule fails those tests (it never fires once a backup has succeeded)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.metrics import job_name

MON = Path(__file__).resolve().parent.parent / "deployments" / "monitoring"


def promtool(*args: str, cwd: Path = MON) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if not binary:
        pytest.fail("promtool is not installed: apt-get install prometheus", pytrace=False)
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_plain_rules_pass_promtool_check():
    out = promtool("check", "rules", "rules.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 9 rules found" in out.stdout


def test_prometheusrule_holds_the_same_rules_and_passes_promtool_check(tmp_path):
    cr = yaml.safe_load((MON / "prometheusrule.yaml").read_text())
    assert (cr["apiVersion"], cr["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    plain = yaml.safe_load((MON / "rules.yml").read_text())
    assert cr["spec"] == plain
    (tmp_path / "extracted.yml").write_text(yaml.safe_dump(cr["spec"]))
    out = promtool("check", "rules", "extracted.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 9 rules found" in out.stdout


def test_rule_unit_tests_pass():
    out = promtool("test", "rules", "rules.test.yml", "rules.age.test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_runbooks_backup_failed_rule_misses_a_failure_after_a_success(tmp_path):
    rules = yaml.safe_load((MON / "rules.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        if rule.get("alert") == "BackupFailed":
            rule["expr"] = "backup_success_total == 0"  # the runbook's
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    shutil.copy(MON / "rules.test.yml", tmp_path / "rules.test.yml")
    out = promtool("test", "rules", "rules.test.yml", cwd=tmp_path)
    assert out.returncode == 1
    assert "alertname: BackupFailed" in out.stdout + out.stderr


def test_rules_and_dashboard_use_the_jobs_the_code_pushes():
    text = (MON / "rules.yml").read_text() + (MON / "grafana-dashboard.json").read_text()
    for kind in ("backup", "verify", "restore", "drill", "replication"):
        assert job_name(kind) in text
    dashboard = json.loads((MON / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "backup_success_total",
        "backup_attempts_total",
        "backup_duration_seconds_bucket",
        "backup_size_bytes",
        "backup_last_success_timestamp_seconds",
        "backup_expected_interval_seconds",
        "restore_rto_seconds",
        "drill_rpo_seconds",
    ):
        assert metric in exprs
