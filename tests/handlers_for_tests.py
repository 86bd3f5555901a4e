"""Handlers for system tests: they record every execution in the test's own database.

Register with ``TASKD_HANDLERS='{"record": "tests.handlers_for_tests:record"}'`` and create the
table with :data:`EXECUTIONS_TABLE` first. The daemon's ``TASKD_DATABASE_URL`` says where.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
from psycopg_pool import AsyncConnectionPool

from taskd.errors import PermanentError
from taskd.handlers.base import SubtaskContext

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
            os.environ["TASKD_DATABASE_URL"], min_size=1, max_size=4, open=False,
            kwargs={"autocommit": True},
        )
        await pool.open()
        _pool = pool
    return _pool


async def record(ctx: SubtaskContext) -> dict[str, Any]:
    """Record the start, sleep ``ms``, record the end; ``fail`` raises, ``permanent`` too."""
    pool = await _connections()
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO public.executions (subtask_id, attempt, pid) VALUES (%s, %s, %s)"
            " RETURNING id",
            (ctx.id, ctx.attempt, os.getpid()),
        )
        row = await cur.fetchone()
    assert row is not None
    await anyio.sleep(float(ctx.payload.get("ms", 0)) / 1000)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE public.executions SET finished_at = clock_timestamp() WHERE id = %s",
            (row[0],),
        )
    if ctx.payload.get("permanent"):
        raise PermanentError("asked to fail for good")
    if ctx.payload.get("fail"):
        raise RuntimeError("asked to fail")
    return {"n": ctx.payload.get("n"), "pid": os.getpid()}
