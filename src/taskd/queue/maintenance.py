"""The rescuer's queries: the fleet's round, expired leases, dead executors, the pending
timeout, retention.

Each function runs one statement that every daemon may run at the same time as the others
(``queries/maintenance.sql``): no lock is held across a pass, so a daemon that freezes in the
middle of one stops nobody else's. :func:`take_round` makes one daemon a round do the pass.
Times come from the database clock; ``now`` replaces it in tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskd.errors import InvalidInput
from taskd.queue.store import DEFAULT_POISON_AFTER, Store

__all__ = ["DEFAULT_POISON_AFTER", "Round", "delete_finished", "fail_unstarted_tasks",
           "mark_dead_executors", "queues_with_old_unstarted_tasks", "rescue_expired_leases",
           "take_round"]


@dataclass(frozen=True, slots=True)
class Round:
    """``taken``: this daemon does this round's pass. ``next_in``: seconds until the next round
    may be taken, by the database clock (<= 0: ask again soon)."""

    taken: bool
    next_in: float


async def take_round(
    store: Store, name: str, interval: float, taken_by: str, *, now: datetime | None = None,
) -> Round:
    """Take the fleet's round ``name`` if it is due: at most one daemon gets each, and the next
    is due ``interval`` seconds after it was taken (database clock). Raises
    :class:`InvalidInput` unless ``interval`` is a positive finite number of seconds."""
    if not 0 < interval < math.inf:
        raise InvalidInput(f"maintenance round {name!r}: interval must be a positive number of "
                           f"seconds, not {interval!r}")
    [row] = await store.fetch_rows("take_maintenance_round", {
        "name": name, "interval": interval, "taken_by": taken_by, "now": now,
    })
    next_in = row["next_in"]
    return Round(bool(row["taken"]), 0.0 if next_in is None else float(next_in))


async def rescue_expired_leases(
    store: Store, *, poison_after: int = DEFAULT_POISON_AFTER, limit: int = 1000,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Give back one batch of expired leases: pending with the attempt given back and a crash
    counted; failed as poison at ``poison_after`` crashes; cancelled if its task was.

    Returns ``{id, task_id, queue, status}`` per subtask.
    """
    return await store.fetch_rows("rescue_expired_leases", {
        "limit": limit, "poison_after": poison_after, "now": now,
    })


async def mark_dead_executors(
    store: Store, dead_after: float, *, now: datetime | None = None
) -> list[str]:
    """Mark executors whose heartbeat is older than ``dead_after`` dead; return their ids."""
    rows = await store.fetch_rows("mark_dead_executors", {"dead_after": dead_after, "now": now})
    return [row["id"] for row in rows]


async def queues_with_old_unstarted_tasks(
    store: Store, pending_timeouts: Mapping[str, float], *, now: datetime | None = None,
) -> list[str]:
    """Of the queues in ``pending_timeouts`` (queue -> its pending timeout), those with an
    unstarted (pending) task older than the timeout: where :func:`fail_unstarted_tasks` may find
    something. One statement for them all."""
    if not pending_timeouts:
        return []
    queues = sorted(pending_timeouts)
    rows = await store.fetch_rows("queues_with_old_unstarted_tasks", {
        "queues": queues, "pending_timeouts": [pending_timeouts[q] for q in queues], "now": now,
    })
    return [row["queue"] for row in rows]


async def fail_unstarted_tasks(
    store: Store, queue: str, pending_timeout: float, *, limit: int = 1000,
    now: datetime | None = None,
) -> list[int]:
    """Fail one batch of ``queue``'s tasks that nobody started within ``pending_timeout`` of
    becoming runnable; return their ids."""
    rows = await store.fetch_rows("fail_unstarted_tasks", {
        "queue": queue, "pending_timeout": pending_timeout, "limit": limit, "now": now,
    })
    return [row["task_id"] for row in rows]


async def delete_finished(
    store: Store, retention: float, *, limit: int = 1000, now: datetime | None = None
) -> tuple[int, int]:
    """Delete one batch of finished subtasks and tasks older than ``retention``, and of unique
    keys older than it that hold nothing any more; return how many subtasks and tasks."""
    params = {"retention": retention, "limit": limit, "now": now}
    subtasks = await store.fetch_rows("delete_finished_subtasks", params)
    tasks = await store.fetch_rows("delete_finished_tasks", params)
    await store.fetch_rows("delete_free_unique_keys", params)
    return len(subtasks), len(tasks)
