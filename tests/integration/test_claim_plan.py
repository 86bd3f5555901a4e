"""The claim uses its partial index, however many finished rows the table holds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskd.queue.queries import query

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [node]
    for child in node.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


async def test_claim_uses_partial_index_with_a_million_finished_rows(conn: Any) -> None:
    await conn.execute("""
        INSERT INTO taskd.tasks (queue, kind, total, status, completed)
        SELECT 'standard', 'noop', 100000, 'completed', 100000 FROM generate_series(1, 10);
        INSERT INTO taskd.subtasks (task_id, queue, kind, status, attempt, completed_at)
        SELECT 1 + (g % 10), 'standard', 'noop', 'completed', 1, now()
          FROM generate_series(1, 1000000) AS g;
        INSERT INTO taskd.tasks (queue, kind, total) VALUES ('standard', 'noop', 500);
        INSERT INTO taskd.subtasks (task_id, queue, kind, priority)
        SELECT 11, 'standard', 'noop', g % 7 FROM generate_series(1, 500) AS g;
        ANALYZE taskd.subtasks;
        ANALYZE taskd.tasks;
    """)
    params = {"queue": "standard", "executor_id": "e1", "limit": 100, "lease_timeout": 60.0,
              "cluster_max": None, "now": None}
    cur = await conn.execute(b"EXPLAIN (FORMAT JSON) " + query("claim_subtasks").as_bytes(None),
                             params)
    raw = (await cur.fetchone())[0]
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    nodes = plan_nodes(plan)
    on_subtasks = [n for n in nodes if n.get("Relation Name") == "subtasks"]
    assert not [n for n in on_subtasks if n["Node Type"] == "Seq Scan"], json.dumps(plan)
    assert any(n.get("Index Name") == "subtasks_claim_idx" for n in nodes), json.dumps(plan)
    # And the claim really works on that table: 100 rows, highest priority first.
    cur = await conn.execute(query("claim_subtasks"), params)
    claimed = await cur.fetchall()
    assert len(claimed) == 100
    # 71 rows of priority 6 exist among the 500 (g % 7 = 6), then priority 5 fills the batch.
    assert sorted((row[4] for row in claimed), reverse=True) == [6] * 71 + [5] * 29
