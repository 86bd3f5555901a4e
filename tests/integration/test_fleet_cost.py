"""What a daemon of a fleet costs the database beyond its claims and outcomes
(docs/scaling.md, "What a fleet costs the database")."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from taskd.executor.daemon import Daemon
from taskd.queue.store import Store
from taskd.settings import QueueSettings, Settings
from tests.factories import wait_until

pytestmark = pytest.mark.anyio


async def backends(conn: Any, application_name: str) -> list[str]:
    """The last statement of each server process of ``application_name``."""
    cur = await conn.execute(
        "SELECT query FROM pg_stat_activity WHERE application_name = %s ORDER BY pid",
        (application_name,))
    return [row[0] for row in await cur.fetchall()]


def one_queue_daemon(database_url: str, executor_id: str) -> Settings:
    return Settings(
        database_url=database_url, metrics_addr="127.0.0.1:0", executor_id=executor_id,
        handlers={}, listen=False, shutdown_grace=5, pool_size=5,
        queues={"standard": QueueSettings(initial=2, max=2),
                "lumina": QueueSettings(enabled=False)})


async def test_a_daemon_opens_its_whole_pool_at_the_start(
    database_url: str, conn: Any,
) -> None:
    """All ``pool_size`` connections exist once the daemon is ready: none is opened
    cold under the first burst of work (main opened 2 and grew the pool under load)."""
    daemon = Daemon(one_queue_daemon(database_url, "whole-pool"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        await wait_until(lambda: daemon.producers, within=30, message="the daemon started")
        # listen = false: the pool is all pool_size connections.
        assert len(await backends(conn, "taskd whole-pool")) == 5
        daemon.stopping.set()


async def test_a_quiet_pool_hands_out_the_connection_that_came_back_last(
    database_url: str,
) -> None:
    """One connection carries statements that come one at a time; taken in turn, each of
    them sat idle long enough to be checked with a round trip of its own first."""
    pool = await Store.open(database_url, min_size=3, max_size=3)
    try:
        pids = set()
        for _ in range(6):
            async with pool.pool.connection() as c:
                row = await (await c.execute("SELECT pg_backend_pid()")).fetchone()
                assert row is not None
                pids.add(row[0])
        assert len(pids) == 1, pids
        # Two at once take two.
        async with pool.pool.connection() as a, pool.pool.connection() as b:
            assert a is not b
    finally:
        await pool.close()
