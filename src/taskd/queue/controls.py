"""Queue controls: pause and resume a queue fleet-wide, and the rate limit's window.

The rules live in the database (``taskd.queue_controls``, ``taskd.pause_queue`` and
``taskd.resume_queue``, which SQL clients call too) and are consulted inside the claim
statement (``claim_subtasks``): a paused queue claims nothing on any executor from the pause's
commit on, and a rate-limited queue never starts more than its limit in any stretch of its
period (a sliding window of the database clock: the queue's row keeps its recent claims).
This module is their door for the CLI, the API and the daemon; it turns the functions'
errors into taskd's own by SQLSTATE, never by message text.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from psycopg import errors as pgerrors

from taskd.errors import QueueNotFound
from taskd.queue.connection import Conn, run_query
from taskd.queue.store import Store
from taskd.settings import RateLimit

MAX_PAUSED_BY = 200


@dataclass(frozen=True, slots=True)
class QueueControl:
    """One known queue's controls. ``rate_limit``: what its claims last ran with (``"20/s"``),
    None without one; ``rate_window_used``: starts counted in the period that ends now."""

    queue: str
    paused: bool
    paused_at: datetime | None
    paused_by: str | None
    resumed_at: datetime | None
    rate_limit: str | None
    rate_window_used: int


async def register_queues(store: Store, queues: Mapping[str, RateLimit | None]) -> None:
    """Record the queues a daemon serves, each with its rate limit (None: none): what makes
    them known to :func:`pause_queue`, and the rows a rate-limited claim counts in."""
    names = sorted(queues)
    rates = [queues[q] for q in names]
    await store.fetch_rows("register_queues", {
        "queues": names,
        "rate_limits": [None if r is None else r.starts for r in rates],
        "rate_periods": [None if r is None else r.period for r in rates],
    })


async def change_on(
    conn: Conn, name: Literal["pause_queue", "resume_queue"], queue: str,
    params: dict[str, object], configured: Collection[str],
) -> bool:
    """Pause or resume ``queue`` inside the caller's transaction (the console adds its audit
    row to it); raises :class:`QueueNotFound` as :func:`pause_queue` does."""
    if queue in configured:
        await run_query(conn, "known_queue", {"queue": queue})
    try:
        rows = await run_query(conn, name, {"queue": queue, **params})
    except pgerrors.NoDataFound as exc:
        raise QueueNotFound(
            f"unknown queue {queue!r}: it is not in the settings and no daemon has served "
            "it (taskd queues list shows the known queues)") from exc
    return bool(rows[0]["changed"])


async def _change(
    store: Store, name: Literal["pause_queue", "resume_queue"], queue: str,
    params: dict[str, object], configured: Collection[str],
) -> bool:
    return await store.in_transaction(
        lambda conn: change_on(conn, name, queue, params, configured))


async def pause_queue(
    store: Store, queue: str, *, by: str | None = None, configured: Collection[str] = ()
) -> bool:
    """Pause ``queue`` on every executor: claims of it return nothing from this call's commit
    on, running subtasks finish, submissions are still accepted; it stays paused across
    restarts until :func:`resume_queue`. ``by`` is recorded (default: the database role).
    ``configured``: the queues of the caller's settings, which are known even before a daemon
    has served them. Returns False when it was paused already.

    Raises :class:`QueueNotFound` for a queue neither configured nor known to the database
    (nothing is written) and :class:`taskd.errors.InvalidInput` for a ``by`` over 200
    characters.
    """
    return await _change(store, "pause_queue", queue, {"paused_by": by}, configured)


async def resume_queue(store: Store, queue: str, *, configured: Collection[str] = ()) -> bool:
    """Resume ``queue``: its executors are woken at once (NOTIFY) and claim again; the
    pending timeout of its waiting tasks runs again from now. Returns False when it was not
    paused. Raises :class:`QueueNotFound` as :func:`pause_queue` does."""
    return await _change(store, "resume_queue", queue, {}, configured)


async def list_queue_controls(store: Store) -> list[QueueControl]:
    """Every queue known to the database (served by a daemon, or paused), by name."""
    rows = await store.fetch_rows("list_queue_controls", {})
    return [
        QueueControl(
            queue=r["queue"], paused=r["paused"], paused_at=r["paused_at"],
            paused_by=r["paused_by"], resumed_at=r["resumed_at"],
            rate_limit=None if r["rate_limit"] is None
            else str(RateLimit(r["rate_limit"], r["rate_period"])),
            rate_window_used=int(r["rate_window_used"]),
        )
        for r in rows
    ]


async def rate_limit_wait(store: Store, queue: str, rate: RateLimit) -> float | None:
    """Seconds until ``queue``'s window has room under ``rate`` (0: it has room now): until
    enough of its oldest recorded claims are a period old, by the database clock. None when
    the queue has no control row yet (:func:`register_queues` makes one)."""
    rows = await store.fetch_rows("rate_limit_wait", {
        "queue": queue, "rate_limit": rate.starts, "rate_period": rate.period})
    return max(0.0, float(rows[0]["wait"])) if rows else None
