"""The console's lists read through indexes and stop at their page, with many finished rows
(the page latencies themselves are measured by `python -m bench console`, not asserted)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from bench.console import fill

from taskd.queue.queries import query
from tests.plans import plan_nodes, plan_root

pytestmark = pytest.mark.slow

FILTER = {"status": None, "queue": None, "kind": None, "user_id": None, "created_from": None,
          "created_to": None, "before_id": None, "limit": 50}


def _plan(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> dict[str, Any]:
    row = conn.execute(b"EXPLAIN (FORMAT JSON) " + query(name).as_bytes(None),
                       params).fetchone()
    assert row is not None
    return plan_root(row[0])


def test_the_console_lists_use_their_indexes_with_many_finished_rows(database_url: str) -> None:
    filled = fill(database_url, 100_000, 0)  # 25,000 tasks; 1 in 100 failed
    cases: list[tuple[str, dict[str, Any], str | set[str]]] = [
        ("console_list_tasks", FILTER, "tasks_pkey"),
        ("console_list_tasks", {**FILTER, "status": "failed"}, "tasks_pkey"),
        ("console_list_tasks_by_priority", {**FILTER, "before_priority": None},
         "tasks_priority_idx"),
        ("console_list_tasks_by_priority",
         {**FILTER, "before_priority": 0, "before_id": filled["tasks"] // 2},
         "tasks_priority_idx"),
        # One user in 50: the user's index, or the primary key newest first until 50 match.
        ("console_list_tasks", {**FILTER, "user_id": "user-7"},
         {"tasks_user_idx", "tasks_pkey"}),
        ("console_subtasks", {"task_id": 100, "after_id": 0, "limit": 100}, "subtasks_pkey"),
        ("console_error_subtasks", {"id": 1, "limit": 50}, "subtasks_failed_idx"),
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name, params, index in cases:
            plan = _plan(conn, name, params)
            nodes = plan_nodes(plan)
            seq = [n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"
                   and n.get("Relation Name") in ("tasks", "subtasks")]
            assert seq == [], (name, params, json.dumps(plan))
            wanted = {index} if isinstance(index, str) else index
            assert any(n.get("Index Name") in wanted for n in nodes), (name, json.dumps(plan))
