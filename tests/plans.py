"""Plans of taskd's named statements, for tests that check how PostgreSQL runs one."""

from __future__ import annotations

import json
from typing import Any

from taskd.queue.queries import query


def plan_root(raw: Any) -> dict[str, Any]:
    """The top node of an ``EXPLAIN (FORMAT JSON)`` result (psycopg may have decoded it)."""
    plan: dict[str, Any] = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    return plan


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A plan node and every node under it."""
    nodes = [node]
    for child in node.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


async def explain(conn: Any, name: str, params: dict[str, Any], *,
                  analyze: bool = False) -> dict[str, Any]:
    """The plan of the named query with ``params`` (run, when ``analyze``)."""
    head = b"EXPLAIN (ANALYZE, FORMAT JSON) " if analyze else b"EXPLAIN (FORMAT JSON) "
    cur = await conn.execute(head + query(name).as_bytes(None), params)
    return plan_root((await cur.fetchone())[0])


async def nested_plans(conn: Any, name: str, params: dict[str, Any], containing: str
                       ) -> list[dict[str, Any]]:
    """Run the named query; the plans of the statements with ``containing`` in their text that
    it ran inside functions (or triggers), as auto_explain, loaded into this session (a
    superuser's), reported them."""
    reported: list[str] = []
    conn.add_notice_handler(lambda diag: reported.append(diag.message_primary or ""))
    for setting in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                    "SET auto_explain.log_nested_statements = on",
                    "SET auto_explain.log_format = json", "SET auto_explain.log_level = notice"):
        await conn.execute(setting)
    try:
        await conn.execute(query(name), params)
    finally:
        await conn.execute("SET auto_explain.log_min_duration = -1")
    plans = []
    for message in reported:
        head, _, body = message.partition("plan:\n")
        if head.startswith("duration:") and body:
            document = json.loads(body)
            text = document["Query Text"]
            if text != query(name).as_string(None) and containing in text:
                plans.append(document["Plan"])
    return plans
