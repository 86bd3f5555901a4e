"""Reading what was submitted: the submitters' traceparents, for the executor's tracing."""

from __future__ import annotations

from collections.abc import Iterable

from taskd.queue.store import Store


async def task_traceparents(store: Store, task_ids: Iterable[int]) -> dict[int, str]:
    """The traceparents of these tasks, for those that have one (one query)."""
    ids = list(task_ids)
    if not ids:
        return {}
    rows = await store.fetch_rows("task_traceparents", {"task_ids": ids})
    return {row["id"]: row["traceparent"] for row in rows}
