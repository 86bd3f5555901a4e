"""Handlers for system tests: they record every execution in the test's own database.

Register with ``TASKD_HANDLERS='{"record": "tests.handlers_for_tests:record"}'`` and create the
table with :data:`EXECUTIONS_TABLE` first. The daemon's ``TASKD_DATABASE_URL`` says where.
"""

from __future__ import annotations

import os
import random
from typing import Any

import anyio
from psycopg_pool import AsyncConnectionPool

from taskd.errors import PermanentError
from taskd.handlers.base import SubtaskContext
from taskd.queue.connection import check_when_idle, mark_ok

EXECUTIONS_TABLE = """
CREATE TABLE IF NOT EXISTS public.executions (
    id          bigserial PRIMARY KEY,
    subtask_id  bigint NOT NULL,
    attempt     integer NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
)
"""

_pool: AsyncConnectionPool[Any] | None = None


async def _connections() -> AsyncConnectionPool[Any]:
    global _pool
    if _pool is None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            os.environ["TASKD_DATABASE_URL"], min_size=1, max_size=12, open=False,
            kwargs={"autocommit": True},
            # Checked on checkout unless a statement succeeded on it in the last 2 s (taskd's
            # own rule): one from before the chaos test's PostgreSQL restart (down for 3 s)
            # is checked and replaced. A check on every checkout doubled the handler's round
            # trips, and the chaos test ran CPU-bound on them. (A handler that ran a
            # statement just before the crash may fail on its next one; the chaos test
            # counts such failures like any other.)
            check=check_when_idle,
        )
        await pool.open()
        _pool = pool
    return _pool


async def record(ctx: SubtaskContext) -> dict[str, Any]:
    """Record the start, sleep ``ms``, record the end; ``fail`` raises, ``permanent`` too;
    ``poison`` kills the process right after recording the start.

    ``fail_rate`` (0..1) fails that share of attempts at random, decided by an RNG seeded with
    the subtask id and attempt, so that a test can tell which attempts were meant to fail.
    """
    pool = await _connections()
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO public.executions (subtask_id, attempt, pid) VALUES (%s, %s, %s)"
            " RETURNING id",
            (ctx.id, ctx.attempt, os.getpid()),
        )
        row = await cur.fetchone()
        mark_ok(conn)
    assert row is not None
    if ctx.payload.get("poison"):
        os._exit(70)  # what a segfaulting extension or the OOM killer does to the process
    await anyio.sleep(float(ctx.payload.get("ms", 0)) / 1000)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE public.executions SET finished_at = clock_timestamp() WHERE id = %s",
            (row[0],),
        )
        mark_ok(conn)
    if ctx.payload.get("permanent"):
        raise PermanentError("asked to fail for good")
    if ctx.payload.get("fail"):
        raise RuntimeError("asked to fail")
    if random_failure(ctx.id, ctx.attempt, float(ctx.payload.get("fail_rate", 0))):
        raise RuntimeError("failed at random")
    return {"n": ctx.payload.get("n"), "pid": os.getpid(), "attempt": ctx.attempt}


def random_failure(subtask_id: int, attempt: int, fail_rate: float) -> bool:
    """Whether ``record`` fails this attempt on purpose (the same answer every time)."""
    return fail_rate > 0 and random.Random(f"{subtask_id}:{attempt}").random() < fail_rate


def broken_while(ctx: SubtaskContext) -> dict[str, Any]:
    """Fail for good while the file named by the payload's ``path`` exists, else succeed: a
    bug that an operator fixes, then retries the failed work (the console's browser test)."""
    path = str(ctx.payload["path"])
    if os.path.exists(path):
        raise PermanentError(f"broken: {path} exists <b>not bold</b>")
    return {"n": ctx.payload.get("n"), "fixed": True}
