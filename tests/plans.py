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
