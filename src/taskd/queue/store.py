"""The one door to the database: a typed method per named query.

Only this package executes SQL. Every method translates psycopg's errors into taskd's own
(:mod:`taskd.errors`), chained with ``from``. Times come from the database clock; methods that
tests need to move in time take ``now`` (None means the database's ``now()``).

Over 400 lines on purpose: :class:`Store` is one class, the daemon's whole contract with the
database (claim, outcomes, leases, executors), and reads clearer as one door than split across
modules by accident of size. Reads for operators live in ``status``/``health``/``tasks``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg.rows import BaseRowFactory, class_row, dict_row, scalar_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from taskd import systemd
from taskd.errors import DatabaseUnavailable
from taskd.queue import migrations
from taskd.queue.connection import (
    STATEMENT_TIMEOUT,
    Conn,
    ReconnectingPool,
    check_connect,
    check_when_idle,
    connection_kwargs,
    retried,
    run_query,
    translated_errors,
)
from taskd.queue.encoding import CLAIMED_ROW, outcomes_json
from taskd.queue.jsonload import configure_connection
from taskd.queue.queries import query
from taskd.queue.submission import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    UniqueScope,
    prepare_submission,
    submit_async,
    submitted,
)
from taskd.settings import DEFAULT_MAX_ATTEMPTS, Pooler, RateLimit
from taskd.testsignals import TestSignal
from taskd.types import (
    JSON,
    ClaimedSubtask,
    ExecutorInfo,
    ExecutorStatus,
    Outcome,
    Subtask,
    Task,
)

Row = TypeVar("Row")

#: Crashes of its executor while running it after which a subtask fails as a poison pill; one
#: fewer makes it a suspect that runs alone (the claim skips it; claim_suspect takes it).
DEFAULT_POISON_AFTER = 3
T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass
class StoreSignals:
    """What tests may wait for: the name of each query run through :meth:`Store.fetch_as`
    (how many statements a component makes; pg_stat_statements is not on every server)."""

    statements: TestSignal[str] = field(default_factory=TestSignal)


@dataclass(frozen=True, slots=True)
class QueueClaim:
    """One queue's part of :meth:`Store.claim_subtasks_of_queues`: up to ``limit`` subtasks,
    after ``after`` (the last subtask of the queue's previous claim) or from the head."""

    queue: str
    limit: int
    after: ClaimedSubtask | None = None


@dataclass(frozen=True, slots=True)
class Poll:
    """:meth:`Store.poll`'s answer: the queues with ready work (in the order asked), whether
    a suspect waits, whether a notification is due (False when not asked)."""

    ready: list[str]
    suspects: bool
    notifications: bool


class Store:
    """Typed access to taskd's tables over a connection pool."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self.signals = StoreSignals()

    @classmethod
    async def open(
        cls,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        application_name: str = "taskd",
        statement_timeout: float | None = STATEMENT_TIMEOUT,
        check_schema: bool = True,
        connect_timeout: float = 10.0,
        checkout_timeout: float = 10.0,
        pooler: Pooler = "none",
    ) -> Store:
        """Open a pool, wait for its first connection and check the schema version.

        ``pooler="transaction"``: the URL goes through a pooler in transaction mode (see
        :func:`~taskd.queue.connection.connection_kwargs`).

        Raises :class:`DatabaseUnavailable` (may pass: try again), :class:`DatabaseRefused`
        (will not: the configuration) or a :class:`taskd.errors.SchemaError`.
        """
        kwargs = connection_kwargs(conninfo, application_name, statement_timeout, pooler=pooler)
        # One connection of our own first: a refusal is known at once and classified, where
        # the pool would try again until its timeout and then say only that it timed out.
        await check_connect(conninfo, kwargs, connect_timeout)
        pool: AsyncConnectionPool[Any] = ReconnectingPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            open=False,
            name=application_name,
            # How long a query waits for a connection (e.g. while the database is away)
            # before it fails with DatabaseUnavailable and its caller's backoff takes over.
            timeout=checkout_timeout,
            # A broken connection is noticed on checkout, not by the query that gets it.
            check=check_when_idle,
            configure=configure_connection,
        )
        try:
            async with translated_errors():
                await pool.open(wait=True, timeout=connect_timeout)
        except DatabaseUnavailable:
            await pool.close()
            await check_connect(conninfo, kwargs, connect_timeout)  # says why, if it can
            raise DatabaseUnavailable("database unavailable: no connection within "
                                      f"{connect_timeout:g} s") from None
        except BaseException:
            await pool.close()
            raise
        store = cls(pool)
        if check_schema:
            try:
                async with translated_errors(), pool.connection() as conn:
                    await migrations.check_schema(conn)
            except BaseException:
                await pool.close()
                raise
        return store

    async def close(self, worker_wait: float = 5.0) -> None:
        """Close the pool, waiting up to ``worker_wait`` seconds for its workers (one may be
        connecting to a database that does not answer)."""
        await self.pool.close(timeout=worker_wait)

    # -- plumbing ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(
        self, conn: psycopg.AsyncConnection[Any] | None
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """``conn`` when given, else a connection from the pool for the block."""
        if conn is not None:
            yield conn
            return
        async with self.pool.connection() as pooled:
            yield pooled

    async def fetch_as(
        self, name: str, params: dict[str, Any], row_type: type[Row],
        row_factory: BaseRowFactory[Row] | None = None, *, binary: bool = False,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[Row]:
        """Run the named query; return its rows as ``row_type`` (a dataclass, built from
        columns by name unless ``row_factory`` says otherwise, e.g. :func:`fields_row`).
        ``binary`` asks for the rows in PostgreSQL's binary format (see ``claim_subtasks``).

        ``conn`` runs it there instead of on a pooled connection (see ``claim_subtasks``).
        For the queue package's own modules; deadlocks are retried, errors translated.
        """
        factory = row_factory or class_row(row_type)
        self.signals.statements.signal(name)

        async def once() -> list[Row]:
            if conn is not None:  # a claim right after a notification: no pool, no context
                return await run_query(conn, name, params, factory, binary=binary)
            async with self.pool.connection() as pooled:
                return await run_query(pooled, name, params, factory, binary=binary)

        return await retried(once)

    async def fetch_rows(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Run the named query; return its rows as dicts (none for a statement without rows)."""
        return await self.fetch_as(name, params, dict, dict_row)

    async def in_transaction(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """``work`` on a pooled connection in one transaction, run again after a deadlock;
        psycopg's errors translated. ``work`` runs its statements with :func:`run_query`."""

        async def once() -> T:
            async with self.pool.connection() as conn, conn.transaction():
                return await work(conn)

        return await retried(once)

    # -- submitting ---------------------------------------------------------------------------

    async def submit(
        self,
        queue: str,
        kind: str,
        payloads: Sequence[dict[str, JSON]],
        *,
        name: str = "",
        priority: int = 0,
        params: dict[str, JSON] | None = None,
        user_id: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        delay: float = 0.0,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        traceparent: str | None = None,
        unique_key: str | None = None,
        unique_scope: UniqueScope | None = None,
        after: Sequence[int] | None = None,
        notify_url: str | None = None,
        notify_on: Sequence[str] | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> int:
        """Insert a task and its subtasks in one round trip and wake the queue's executors.

        ``max_payload_bytes`` is checked here first; the database enforces its own limit
        (``taskd.limits``). A ``user_id`` needs EXECUTE on ``taskd.submit_task_for_user``.
        ``traceparent``: the W3C traceparent of the submitter's span, which the span of each
        run links to (OpenTelemetry).

        ``notify_url``: a webhook told of the task's end (https, or http to a private address
        when the database allows it), for the ends in ``notify_on`` (default ``["failed"]``;
        also ``completed``, ``cancelled``).

        ``unique_key`` (1 to 200 characters): while a task holds the key, a submission with it
        returns that task's id and creates nothing. ``unique_scope``: how long a task holds
        it: ``"unfinished"`` (default: until it ends), ``"forever"``, or a period (``"1 hour"``,
        seconds, a timedelta) from its submission.

        ``after``: ids of tasks this one waits for: its subtasks become claimable when every
        one of them has completed; if one fails or is cancelled, so is this task, with an error
        naming it. An unknown id is refused (:class:`InvalidInput`, nothing written).

        ``conn``: the caller's connection; the task is created in its open transaction and
        commits or rolls back with it (see :func:`taskd.queue.submission.submit_async`).

        Returns the task id. Raises :class:`InvalidInput` (nothing written) for bad input.
        """
        options: dict[str, Any] = {
            "name": name, "priority": priority, "params": params, "user_id": user_id,
            "max_attempts": max_attempts, "delay": delay,
            "max_payload_bytes": max_payload_bytes, "traceparent": traceparent,
            "unique_key": unique_key, "unique_scope": unique_scope, "after": after,
            "notify_url": notify_url, "notify_on": notify_on,
        }
        if conn is not None:
            return (await submit_async(conn, queue, kind, payloads, **options)).task_id
        query_name, values = prepare_submission(queue, kind, payloads, **options)
        rows = await self.fetch_as(query_name, values, tuple, tuple_row)
        return submitted(rows[0]).task_id

    # -- the executor's hot path --------------------------------------------------------------

    async def claim_subtasks(
        self,
        queue: str,
        executor_id: str,
        limit: int,
        lease_timeout: float,
        *,
        cluster_max: int | None = None,
        rate_limit: RateLimit | None = None,
        now: datetime | None = None,
        after: ClaimedSubtask | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
        poison_after: int = DEFAULT_POISON_AFTER,
    ) -> list[ClaimedSubtask]:
        """Claim up to ``limit`` ready subtasks of ``queue``: highest priority, then oldest;
        returned in that order.

        With ``cluster_max``, never more than that many of the queue's subtasks are processing
        across all executors once this returns. With ``rate_limit``, never more than its
        ``starts`` of the queue's subtasks have a ``started_at`` within any stretch of its
        period, across all executors (recorded in the queue's control row, in the same
        statement; a queue without one, see :func:`taskd.queue.controls.register_queues`,
        claims nothing).
        A paused queue (:func:`taskd.queue.controls.pause_queue`) claims nothing.

        With ``after`` (the last subtask of an earlier claim), only subtasks that come after
        it in that order are looked at: its priority from its place on, then lower priorities.
        That skips the claim index's head, where every row claimed since the last VACUUM
        still has an entry; the caller decides when rows before ``after`` may have become
        ready and the claim must start from the head.

        The rows come in binary: cheaper on both sides than text (PostgreSQL formats a
        float8 or a timestamptz as text at some cost; docs/benchmarks.md).

        ``conn``, an autocommit connection with the pool's session settings, runs the claim
        instead of a pooled one: the producer's claim right after a notification runs on the
        listening connection (``taskd.executor.notifier.ListenLender``).
        """
        if limit <= 0:
            return []
        params = {"queue": queue, "executor_id": executor_id, "limit": limit,
                  "lease_timeout": lease_timeout, "cluster_max": cluster_max, "now": now,
                  "rate_limit": None if rate_limit is None else rate_limit.starts,
                  "rate_period": None if rate_limit is None else rate_limit.period,
                  "after_priority": None if after is None else after.priority,
                  "after_run_after": None if after is None else after.run_after,
                  "after_id": None if after is None else after.id,
                  "suspect_after": poison_after - 1}
        if rate_limit is not None:
            name = "claim_subtasks_rate_limited"
        else:
            name = "claim_subtasks" if cluster_max is not None else "claim_subtasks_plain"
        if cluster_max is None:
            claimed = await self.fetch_as(name, params, ClaimedSubtask,
                                          CLAIMED_ROW, binary=True, conn=conn)
        else:
            async with translated_errors(), self._connection(conn) as c, c.transaction():
                await c.execute(query("lock_queue_claims"), params)
                cur = c.cursor(row_factory=CLAIMED_ROW, binary=True)
                await cur.execute(query(name), params)
                claimed = await cur.fetchall()
        return claimed

    async def claim_subtasks_of_queues(
        self,
        claims: Sequence[QueueClaim],
        executor_id: str,
        lease_timeout: float,
        *,
        now: datetime | None = None,
        poison_after: int = DEFAULT_POISON_AFTER,
    ) -> dict[str, list[ClaimedSubtask]]:
        """:meth:`claim_subtasks` for several queues in one statement, each with its own limit
        and resume point (one :class:`QueueClaim` a queue, each queue once); returns each
        queue's subtasks in claim order (a queue that got none is missing). Not for queues
        with a rate limit or a ``cluster_max``: their claims need their own statements. A
        paused queue claims nothing."""
        wanted = [c for c in claims if c.limit > 0]
        if not wanted:
            return {}
        rows = await self.fetch_as("claim_subtasks_of_queues", {
            "queues": [c.queue for c in wanted],
            "limits": [c.limit for c in wanted],
            "after_priorities": [None if c.after is None else c.after.priority for c in wanted],
            "after_run_afters": [None if c.after is None else c.after.run_after for c in wanted],
            "after_ids": [None if c.after is None else c.after.id for c in wanted],
            "executor_id": executor_id, "lease_timeout": lease_timeout, "now": now,
            "suspect_after": poison_after - 1,
        }, ClaimedSubtask, CLAIMED_ROW, binary=True)
        by_queue: dict[str, list[ClaimedSubtask]] = {}
        for row in rows:
            by_queue.setdefault(row.queue, []).append(row)
        return by_queue

    async def claim_suspect(
        self, executor_id: str, queues: Sequence[str], lease_timeout: float,
        *, poison_after: int = DEFAULT_POISON_AFTER, now: datetime | None = None,
    ) -> ClaimedSubtask | None:
        """Claim one suspect of ``queues`` (a subtask that was running in ``poison_after - 1``
        crashes of its executor), for an executor that runs nothing else while it runs; None
        when none is ready."""
        rows = await self.fetch_as("claim_suspect", {
            "executor_id": executor_id, "queues": list(queues), "lease_timeout": lease_timeout,
            "suspect_after": poison_after - 1, "now": now,
        }, ClaimedSubtask, CLAIMED_ROW, binary=True)
        return rows[0] if rows else None

    async def suspects_waiting(
        self, queues: Sequence[str], *, poison_after: int = DEFAULT_POISON_AFTER
    ) -> bool:
        """Whether a suspect of ``queues`` is ready to run (a cheap read of a tiny index)."""
        rows = await self.fetch_rows("suspects_waiting", {
            "queues": list(queues), "suspect_after": poison_after - 1})
        return bool(rows[0]["waiting"])

    async def poll(
        self, queues: Sequence[str], *, poison_after: int = DEFAULT_POISON_AFTER,
        suspects: bool = False, notifications: bool = False, now: datetime | None = None,
    ) -> Poll:
        """The executor's look an interval, one statement: which of ``queues`` a claim would
        take something from now (a ready subtask that is not a suspect; not paused; rate
        window not used up), a probe of the claim index per queue; with ``suspects``, whether
        a suspect of them is ready; with ``notifications``, whether a task-end notification
        is due."""
        rows = await self.fetch_as("poll", {
            "queues": list(queues), "suspect_after": poison_after - 1, "now": now,
            "suspects": suspects, "notifications": notifications,
        }, Poll)
        return rows[0]

    async def record_outcomes(
        self, executor_id: str, outcomes: Sequence[Outcome], *, now: datetime | None = None
    ) -> set[int]:
        """Write outcomes in one statement, fenced; return the ids that were applied.

        An outcome whose id is missing from the result lost its lease: it was not applied, and
        its ``failure`` not counted. The failures of those applied are aggregated into
        error_logs by ``(error_type, message)`` in the same statement.
        """
        if not outcomes:
            return set()
        batch = outcomes_json(outcomes)
        # The ids as they are, not a dict per row: the batch returns up to 500 of them.
        ids = await self.fetch_as("record_outcomes", {
            "executor_id": executor_id, "outcomes": batch, "now": now,
        }, int, scalar_row)
        return set(ids)

    async def checkpoint(
        self, executor_id: str, subtask_id: int, attempt: int, state: JSON
    ) -> bool:
        """Persist a handler's state on its subtask; False when the lease was lost."""
        rows = await self.fetch_rows("checkpoint_subtask", {
            "executor_id": executor_id, "id": subtask_id, "attempt": attempt,
            "state": Jsonb(state),
        })
        return bool(rows)

    async def extend_leases(
        self,
        executor_id: str,
        subtask_ids: Iterable[int],
        lease_timeout: float,
        *,
        now: datetime | None = None,
    ) -> set[int]:
        """Extend the leases this executor still holds; return the ids it still holds."""
        ids = list(subtask_ids)
        if not ids:
            return set()
        rows = await self.fetch_rows("extend_leases", {
            "executor_id": executor_id, "ids": ids, "lease_timeout": lease_timeout, "now": now,
        })
        return {row["id"] for row in rows}

    async def release_subtasks(
        self, executor_id: str, held: Sequence[tuple[int, int]]
    ) -> set[int]:
        """Give ``(subtask_id, attempt)`` back as pending without spending the attempt."""
        if not held:
            return set()
        rows = await self.fetch_rows("release_subtasks", {
            "executor_id": executor_id,
            "ids": [subtask_id for subtask_id, _ in held],
            "attempts": [attempt for _, attempt in held],
        })
        return {row["id"] for row in rows}

    async def cancel_requested(self, subtask_ids: Iterable[int]) -> set[int]:
        """Of these processing subtasks, the ones whose task was cancelled."""
        ids = list(subtask_ids)
        if not ids:
            return set()
        rows = await self.fetch_rows("cancel_requested", {"ids": ids})
        return {row["id"] for row in rows}

    # -- executors ------------------------------------------------------------------------------

    async def register_executor(self, info: ExecutorInfo) -> None:
        await self.fetch_rows("register_executor", {
            "id": info.id, "executor_group": info.executor_group, "hostname": info.hostname,
            "pid": info.pid, "version": info.version, "concurrency": Jsonb(info.concurrency),
            "metrics_url": info.metrics_url,
        })

    async def heartbeat_executor(
        self,
        executor_id: str,
        concurrency: dict[str, int],
        running: dict[str, int],
        *,
        now: datetime | None = None,
    ) -> ExecutorStatus | None:
        """Record a heartbeat; return the executor's status, None if its row is gone."""
        rows = await self.fetch_rows("heartbeat_executor", {
            "id": executor_id, "concurrency": Jsonb(concurrency), "running": Jsonb(running),
            "now": now,
        })
        return rows[0]["status"] if rows else None

    async def set_executor_status(self, executor_id: str, status: ExecutorStatus) -> None:
        await self.fetch_rows("set_executor_status", {"id": executor_id, "status": status})

    # -- tasks ----------------------------------------------------------------------------------

    async def get_task(self, task_id: int) -> Task | None:
        rows = await self.fetch_as("get_task", {"id": task_id}, Task)
        return rows[0] if rows else None

    async def list_subtasks(
        self, task_id: int, *, after_id: int = 0, limit: int = 100
    ) -> list[Subtask]:
        return await self.fetch_as(
            "list_subtasks", {"task_id": task_id, "after_id": after_id, "limit": limit}, Subtask
        )

    async def cancel_task(self, task_id: int) -> tuple[int, int]:
        """Cancel pending subtasks, ask running ones to stop: (cancelled, asked to stop)."""
        rows = await self.fetch_rows("cancel_task", {"task_id": task_id})
        return int(rows[0]["cancelled"]), int(rows[0]["requested"])

    async def retry_task(self, task_id: int) -> int:
        """Put the task's failed subtasks back to pending with fresh attempts."""
        return len(await self.fetch_rows("retry_failed_subtasks", {"task_id": task_id}))

    async def database_now(self) -> datetime:
        rows = await self.fetch_rows("database_now", {})
        value: datetime = rows[0]["now"]
        return value


async def when_available(
    once: Callable[[], Awaitable[T]],
    *,
    stop: anyio.Event | None = None,
    retry_base: float = 0.5,
    retry_max: float = 5.0,
    connect_timeout: float = 10.0,
) -> T | None:
    """``once()`` (e.g. a :meth:`Store.open`) until it gets through to the database.

    While the database is unavailable (no server answers, no free connection slot, starting
    up or in recovery) it is tried again after ``retry_base`` seconds, then twice as long each
    time up to ``retry_max``; each failed try is one warning, and systemd is told that the
    start goes on (``EXTEND_TIMEOUT_USEC``), so that ``TimeoutStartSec`` does not end it.
    Returns None if ``stop`` is set meanwhile. :class:`taskd.errors.DatabaseRefused` (the
    configuration), a :class:`taskd.errors.SchemaError` and any other error propagate at once.
    """
    attempt = 0
    while True:
        try:
            return await once()
        except DatabaseUnavailable as exc:
            attempt += 1
            delay = min(retry_max, retry_base * 2 ** (attempt - 1))
            log.warning("database unavailable, retrying",
                        extra={"attempt": attempt, "retry_in_s": delay, "error": str(exc)})
            # The next try: the wait, then up to two connection timeouts (ours, the pool's).
            extend = delay + 2 * connect_timeout + 5
            systemd.notify(f"STATUS=waiting for the database (try {attempt}): {exc}\n"
                           f"EXTEND_TIMEOUT_USEC={int(extend * 1_000_000)}")
        if stop is None:
            await anyio.sleep(delay)
            continue
        with anyio.move_on_after(delay):
            await stop.wait()
        if stop.is_set():
            return None
