"""deploy/grafana/taskd.json is a dashboard Grafana loads: valid JSON, a Prometheus datasource
variable that every panel uses, and the panels operators need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "taskd.json"


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_datasource_is_a_prometheus_variable_used_by_every_panel() -> None:
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()


def test_panels_have_unique_ids_and_a_place() -> None:
    dashboard = load()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    assert dashboard["uid"] == "taskd" and dashboard["schemaVersion"] >= 36


def test_the_panels_operators_need_are_there() -> None:
    exprs = " ".join(
        t["expr"] for p in load()["panels"] if p["type"] != "row" for t in p["targets"]
    )
    for needed in (
        "taskd_subtasks_finished_total",  # throughput by outcome
        "taskd_notification_deliveries_total",  # task-end webhooks
        "taskd_queue_depth",  # backlog per queue
        "taskd_queue_oldest_pending_seconds",
        "taskd_queue_oldest_unstarted_seconds",  # the pending timeout's clock
        "taskd_queue_concurrency_limit", "taskd_queue_running",  # limit vs running
        "taskd_subtask_duration_seconds_bucket", "taskd_subtask_wait_seconds_bucket",
        "taskd_leases_rescued_total", "taskd_leases_lost_total",
        "taskd_errors_total",  # errors by type
        # storage: bloat and vacuum (issue 32)
        "taskd_table_dead_tuples", "taskd_table_live_tuples", "taskd_index_size_bytes",
        "taskd_table_seconds_since_vacuum", "taskd_db_connections",
        # job flow (issue 28)
        "taskd_tasks_waiting_on_dependencies", "taskd_unique_duplicates_total",
    ):
        assert needed in exprs, needed
