"""Assertions about what the code under test submitted.

``assert_submitted(conn, kind="resize", payload={"image": "cat.png"})`` passes when a task of
that kind, one of whose subtasks has exactly that payload, is visible to ``conn``: on the
service's own connection inside its open transaction, that includes what the transaction
submitted and has not committed yet. It returns the matching tasks; on failure the message
lists the tasks of that kind it found. With a sync psycopg connection it returns them at once;
with an async connection or a :class:`~taskd.queue.store.Store`, await it.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, overload

import psycopg

from taskd.queue.inspection import SubmittedTask, submitted_tasks, submitted_tasks_async
from taskd.queue.store import Store
from taskd.types import JSON

_ANY: Any = object()


@overload
def assert_submitted(
    conn: psycopg.Connection[Any], *, kind: str, payload: dict[str, JSON] = ...,
    payloads: Sequence[dict[str, JSON]] = ..., queue: str | None = None,
    count: int | None = None,
) -> list[SubmittedTask]: ...


@overload
def assert_submitted(
    conn: psycopg.AsyncConnection[Any] | Store, *, kind: str, payload: dict[str, JSON] = ...,
    payloads: Sequence[dict[str, JSON]] = ..., queue: str | None = None,
    count: int | None = None,
) -> Coroutine[Any, Any, list[SubmittedTask]]: ...


def assert_submitted(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | Store,
    *,
    kind: str,
    payload: dict[str, JSON] = _ANY,
    payloads: Sequence[dict[str, JSON]] = _ANY,
    queue: str | None = None,
    count: int | None = None,
) -> list[SubmittedTask] | Coroutine[Any, Any, list[SubmittedTask]]:
    """Assert that tasks of ``kind`` were submitted; return those that match.

    ``payload``: one of the task's subtasks has exactly this payload. ``payloads``: the task's
    payloads are exactly these, in order. ``queue``: only tasks on this queue. ``count``:
    exactly this many tasks match (default: at least one). Raises :class:`AssertionError`.
    """
    def check(found: list[SubmittedTask]) -> list[SubmittedTask]:
        return _matching(found, kind=kind, payload=payload, payloads=payloads, queue=queue,
                         count=count)

    if isinstance(conn, psycopg.Connection):
        return check(submitted_tasks(conn, kind, queue))

    async def later() -> list[SubmittedTask]:
        return check(await submitted_tasks_async(conn, kind, queue))

    return later()


def _matching(
    found: list[SubmittedTask], *, kind: str, payload: dict[str, JSON],
    payloads: Sequence[dict[str, JSON]], queue: str | None, count: int | None,
) -> list[SubmittedTask]:
    matches = [
        task for task in found
        if (payload is _ANY or payload in task.payloads)
        and (payloads is _ANY or task.payloads == list(payloads))
    ]
    if (count is None and matches) or (count is not None and len(matches) == count):
        return matches
    wanted = [f"kind={kind!r}"]
    if queue is not None:
        wanted.append(f"queue={queue!r}")
    if payload is not _ANY:
        wanted.append(f"payload={payload!r}")
    if payloads is not _ANY:
        wanted.append(f"payloads={list(payloads)!r}")
    expected = "at least one task" if count is None else f"{count} task(s)"
    seen = "\n".join(f"  task {t.id} on {t.queue}: payloads {t.payloads!r}" for t in found[:20])
    raise AssertionError(
        f"expected {expected} with {', '.join(wanted)}; {len(matches)} matched of "
        f"{len(found)} of that kind" + (":\n" + seen if seen else "")
    )
