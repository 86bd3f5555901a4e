"""The task-end outbox (``taskd.notifications``): targets checked at submit, the dispatcher's
claim and results, the operators' view and redelivery. What a target must be is checked in
:mod:`taskd.queue.submission` and again by the database.

Outbox rows are never written here: the counter trigger inserts them in the statement that ends
a task (``sql/0014_task_notifications.sql``), so a task's end and its notifications commit
together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from taskd.errors import InvalidInput
from taskd.queue.store import Store

Verdict = Literal["delivered", "retry", "dead"]


@dataclass(frozen=True, slots=True)
class ClaimedNotification:
    """A notification the dispatcher holds, with what its payload says. The task's fields are
    None when retention has already deleted it."""

    id: int
    task_id: int
    url: str
    event: str
    attempts: int
    created_at: datetime
    name: str | None
    queue: str | None
    kind: str | None
    task_status: str | None
    total: int | None
    completed: int | None
    failed: int | None
    cancelled: int | None
    task_created_at: datetime | None
    task_completed_at: datetime | None
    first_error: str | None


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What one delivery came to. ``delay``: seconds until the next try (``retry``)."""

    id: int
    attempts: int
    verdict: Verdict
    delay: float = 0.0
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class NotificationRow:
    id: int
    task_id: int
    url: str
    event: str
    status: str
    attempts: int
    run_after: datetime
    locked_by: str | None
    created_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class NotificationOverview:
    undelivered: int
    dead: int
    oldest_undelivered_seconds: float | None


async def claim_notifications(
    store: Store, executor_id: str, limit: int, lease_timeout: float,
) -> list[ClaimedNotification]:
    """Claim up to ``limit`` due notifications for ``lease_timeout`` seconds (database clock)."""
    return await store.fetch_as("claim_notifications", {
        "executor_id": executor_id, "limit": limit, "lease_timeout": lease_timeout,
    }, ClaimedNotification)


async def record_deliveries(
    store: Store, executor_id: str, results: Sequence[DeliveryResult], retry_for: float,
) -> dict[int, str]:
    """Write the results in one statement, fenced; return each written row's new status
    (``delivered``, ``pending`` for a retry, ``dead``). A row missing from it was no longer
    this dispatcher's claim."""
    if not results:
        return {}
    rows = await store.fetch_rows("record_deliveries", {
        "executor_id": executor_id, "retry_for": retry_for,
        "ids": [r.id for r in results], "attempts": [r.attempts for r in results],
        "verdicts": [r.verdict for r in results], "delays": [r.delay for r in results],
        "codes": [r.status_code for r in results], "errors": [r.error for r in results],
    })
    return {row["id"]: row["status"] for row in rows}


async def notification_overview(store: Store) -> NotificationOverview:
    """Undelivered and dead notifications, and the oldest undelivered one's age."""
    rows = await store.fetch_as("notification_overview", {}, NotificationOverview)
    return rows[0]


async def list_notifications(
    store: Store, *, status: str | None = None, task_id: int | None = None, limit: int = 50,
) -> list[NotificationRow]:
    """Notifications, newest first; ``status`` pending, delivered or dead."""
    if status is not None and status not in ("pending", "delivered", "dead"):
        raise InvalidInput(f"status {status!r} is not pending, delivered or dead",
                           field="status")
    return await store.fetch_as("list_notifications", {
        "status": status, "task_id": task_id, "limit": limit,
    }, NotificationRow)


async def redeliver_notifications(
    store: Store, *, ids: Sequence[int] | None = None, task_id: int | None = None,
) -> list[int]:
    """Dead notifications (these ``ids``, this task's, or all) due again now, with a fresh
    retry window; return their ids."""
    rows = await store.fetch_rows("redeliver_notifications", {
        "ids": list(ids) if ids is not None else None, "task_id": task_id,
    })
    return [row["id"] for row in rows]
