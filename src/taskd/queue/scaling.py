"""The scaler's door to the database: the ready backlog per queue, the executor's limits.

:mod:`taskd.scaler` decides; these functions are the only SQL it needs (only
:mod:`taskd.queue` executes SQL).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from psycopg.types.json import Jsonb

from taskd.errors import InvalidInput
from taskd.queue.store import Store


async def ready_backlog(
    store: Store, count_up_to: Mapping[str, int], *, now: datetime | None = None
) -> dict[str, int]:
    """Ready pending subtasks of each queue named in ``count_up_to``, in one query.

    Each queue is counted up to its cap (``count_up_to[queue]``); a backlog at least that long
    reads as the cap. ``now`` replaces the database clock (tests). Raises
    :class:`InvalidInput` for a cap below 1 and :class:`taskd.errors.DatabaseError` when the
    query fails.
    """
    queues = list(count_up_to)
    caps = [count_up_to[q] for q in queues]
    bad = [q for q, cap in zip(queues, caps, strict=True) if cap < 1]
    if bad:
        raise InvalidInput(f"count_up_to must be >= 1 for queue {bad[0]!r}", field="count_up_to")
    if not queues:
        return {}
    rows = await store.fetch_rows(
        "scaler_ready_backlog", {"queues": queues, "caps": caps, "now": now}
    )
    return {row["queue"]: int(row["ready"]) for row in rows}


async def record_concurrency(
    store: Store, executor_id: str, concurrency: Mapping[str, int]
) -> bool:
    """Write this executor's limit per queue to its row; False when the row does not exist.

    Raises :class:`taskd.errors.DatabaseError` when the write fails.
    """
    rows = await store.fetch_rows(
        "scaler_record_concurrency", {"id": executor_id, "concurrency": Jsonb(dict(concurrency))}
    )
    return bool(rows)
