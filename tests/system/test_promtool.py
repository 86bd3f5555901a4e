"""deploy/prometheus and deploy/grafana checked by promtool, /metrics by `promtool check
metrics`, deploy/alertmanager by amtool. Without promtool or amtool these skip locally and fail
in CI (CI=true): .ci/run installs both."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from taskd.metrics import Health, Metrics
from taskd.metrics.server import MetricsServer

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "taskd.json"


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    message = "promtool is missing: install Debian's prometheus package (.ci/run does)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_promtool(*args: str, stdin: str | None = None, cwd: Path = PROMETHEUS
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], input=stdin, capture_output=True, text=True, cwd=cwd,
        timeout=60, check=False,
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_pass_promtool_check() -> None:
    done = run_promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_alert_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_wrong_expectation_makes_promtool_test_fail(tmp_path: Path) -> None:
    # The unit tests can fail: expecting silence where an alert fires is reported.
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    firing = next(t for t in tests["tests"] if t["alert_rule_test"][0]["exp_alerts"])
    firing["alert_rule_test"][0]["exp_alerts"] = []
    tests["tests"] = [firing]
    tests["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
    (tmp_path / "t.yml").write_text(yaml.safe_dump(tests))
    done = run_promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert done.returncode != 0
    assert "FAILED" in done.stdout + done.stderr


def test_every_alert_fires_in_one_case_and_stays_silent_in_another() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for test in tests:
        for check in test["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts without a firing case"
    assert names - silent == set(), "alerts without a healthy case"


def test_every_alert_has_severity_summary_and_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert "{{ $labels." in rule["annotations"]["description"], rule["alert"]


def test_issue_alerts_are_all_there() -> None:
    assert {rule["alert"] for rule in alert_rules()} >= {
        "TaskdExecutorDown", "TaskdExecutorNotHeartbeating", "TaskdNoLiveExecutor",
        "TaskdBacklogGrowing", "TaskdOldestPendingTooOld", "TaskdHighFailureRatio",
        "TaskdLeasesRescued", "TaskdLeasesLost", "TaskdDatabasePoolExhausted",
        "TaskdClaimIndexBloated", "TaskdTableNotVacuumed",
    }


def test_prometheus_config_is_valid() -> None:
    done = run_promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"] if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Grafana's variables replaced by what they expand to; promtool then parses each query.
    exprs = [
        e.replace("$__rate_interval", "1m").replace("$queue", ".*").replace("$instance", ".*")
        for e in dashboard_exprs()
    ]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
    ]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    done = run_promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


def test_every_metric_the_alerts_and_dashboard_use_exists() -> None:
    known = set()
    for metric in populated_metrics().registry.collect():
        known.add(metric.name)
        known.update(sample.name for sample in metric.samples)
    texts = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    used = {name for text in texts for name in re.findall(r"\btaskd_[a-z_]+", text)}
    assert used, "no taskd metric found in the rules"
    assert used - known == set()


def populated_metrics() -> Metrics:
    m = Metrics()
    m.subtasks_claimed.labels("standard").inc(3)
    m.claims_rate_limited.labels("standard").inc()
    m.queue_paused.labels("standard").set(1)
    m.unique_duplicates.labels("standard").inc()
    m.tasks_waiting_on_dependencies.labels("standard").set(1)
    for outcome in ("completed", "failed", "retried"):
        m.subtasks_finished.labels("standard", outcome).inc()
    m.leases_lost.labels("standard").inc()
    m.leases_rescued.labels("standard").inc()
    m.scaler_adjustments.labels("standard", "up").inc()
    m.errors.labels("standard", "ValueError").inc()
    m.subtask_duration.labels("standard").observe(0.2)
    m.subtask_wait.labels("standard").observe(0.01)
    m.queue_depth.labels("standard", "ready").set(4)
    m.queue_oldest_pending.labels("standard").set(2.5)
    m.queue_pending_timeout.labels("standard").set(600)
    m.queue_concurrency_limit.labels("standard").set(10)
    m.queue_running.labels("standard").set(1)
    m.executors.labels("running").set(2)
    m.executor_last_heartbeat.set(1.7e9)
    m.db_pool_connections.labels("used").set(1)
    m.db_pool_waiting.set(0)
    m.table_live_tuples.labels("subtasks").set(1000)
    m.table_dead_tuples.labels("subtasks").set(10)
    m.table_size.labels("subtasks").set(8192)
    m.index_size.labels("subtasks", "subtasks_claim_idx").set(8192)
    m.table_vacuum_age.labels("subtasks").set(30)
    m.table_vacuums.labels("subtasks").set(2)
    m.db_connections.labels("idle").set(3)
    m.build_info.labels("0.1.0").set(1)
    for outcome in ("delivered", "retried", "dead"):
        m.notification_deliveries.labels(outcome).inc()
    m.notifications.labels("undelivered").set(3)
    m.notifications.labels("dead").set(1)
    m.notification_oldest_undelivered.set(42.0)
    return m


@pytest.mark.anyio
async def test_served_metrics_pass_promtool_check_metrics() -> None:
    server = MetricsServer("127.0.0.1:0", populated_metrics(), Health(1.0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.run)
        await server.started.wait()
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{server.port}/metrics")).text
        tg.cancel_scope.cancel()
    assert "taskd_subtasks_finished_total" in text
    done = await anyio.to_thread.run_sync(
        lambda: run_promtool("check", "metrics", stdin=text)
    )
    assert done.returncode == 0, done.stdout + done.stderr


ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


def amtool() -> str:
    found = shutil.which("amtool")
    if found:
        return found
    message = "amtool is missing: install Debian's prometheus-alertmanager package (.ci/run does)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [amtool(), *args], capture_output=True, text=True, timeout=60, check=False,
    )


def test_alertmanager_config_passes_amtool_check_config() -> None:
    done = run_amtool("check-config", str(ALERTMANAGER))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_a_broken_alertmanager_config_fails_amtool(tmp_path: Path) -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    config["route"]["routes"][0]["receiver"] = "nobody"
    (tmp_path / "am.yml").write_text(yaml.safe_dump(config))
    done = run_amtool("check-config", str(tmp_path / "am.yml"))
    assert done.returncode != 0


@pytest.mark.parametrize(("severity", "receiver"), [
    ("critical", "taskd-pager"), ("warning", "taskd-tickets"),
])
def test_alerts_are_routed_by_severity(severity: str, receiver: str) -> None:
    done = run_amtool(
        "config", "routes", "test", f"--config.file={ALERTMANAGER}",
        f"severity={severity}", "alertname=TaskdExecutorDown", "queue=standard",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == receiver


def test_every_alert_severity_has_a_route() -> None:
    routed = {
        matcher.split("=")[1].strip().strip('"')
        for route in yaml.safe_load(ALERTMANAGER.read_text())["route"]["routes"]
        for matcher in route["matchers"]
    }
    assert {rule["labels"]["severity"] for rule in alert_rules()} <= routed


def test_prometheus_sends_alerts_to_alertmanager() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets and all(t.endswith(":9093") for t in targets)
