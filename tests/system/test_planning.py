"""The executor's outcome write (migration 26) and its plain claim (27) keep one plan a session.

The daemon's sessions plan every statement for its parameters (``plan_cache_mode =
force_custom_plan``, which the claim statements with a cluster_max or a rate limit need); the
outcome write and the claim, run for every batch, were planned anew each time: ~0.25 ms each,
most of a small batch's cost and of the way from a notification to the start. Counted here with
``pg_stat_statements`` (planning tracked, nested statements too) on the fleet bench's own
cluster (Debian's PostgreSQL 15): the shared server does not load it, nor has pgserver's build.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import psycopg
import pytest
from bench import fleet

from taskd.queue import Store
from taskd.types import Outcome
from tests.factories import submit

LEASE = 60.0
BATCHES = 12


@pytest.fixture
def server() -> Iterator[fleet.OwnedServer]:
    if not (fleet.PG_BIN / "postgres").exists():
        pytest.skip("needs PostgreSQL 15 in /usr/lib/postgresql/15 (test_bench_smoke fails in CI)")
    server = fleet.OwnedServer(max_connections=20)
    try:
        yield server
    finally:
        server.close()


def _tracked(admin: psycopg.Connection[Any]) -> None:
    """pg_stat_statements on for the database: planning tracked, nested statements too."""
    name = admin.info.dbname
    admin.execute(f'ALTER DATABASE "{name}" SET pg_stat_statements.track = \'all\'')
    admin.execute(f'ALTER DATABASE "{name}" SET pg_stat_statements.track_planning = on')


def _calls_and_plans(conn: psycopg.Connection[Any], *patterns: str) -> tuple[int, int]:
    """Calls and plans of the statements whose text has every pattern, wherever they ran (top
    level, or inside a function), the migrations and this query left out."""
    row = conn.execute(
        "SELECT coalesce(sum(calls), 0), coalesce(sum(plans), 0) FROM pg_stat_statements"
        " WHERE query LIKE ALL(%s::text[]) AND query NOT LIKE '-- taskd schema, version%%'"
        "   AND query NOT LIKE '%%pg_stat_statements%%'",
        [[f"%{p}%" for p in patterns]]).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_a_session_plans_its_claims_once(server: fleet.OwnedServer) -> None:
    """From the claim index's head and from a resume point: one plan for both."""
    with server.database() as url:
        with psycopg.connect(url, autocommit=True) as admin:
            _tracked(admin)
        anyio.run(_claim_batches, url)
        with psycopg.connect(url, autocommit=True) as conn:
            calls, plans = _calls_and_plans(conn, "FOR UPDATE SKIP LOCKED",
                                            "UPDATE taskd.subtasks")
            processing = conn.execute("SELECT count(*) FROM taskd.subtasks"
                                      " WHERE status = 'processing'").fetchone()
    assert processing == (2 * BATCHES,)
    assert calls == BATCHES
    # One generic plan for the session (before version 27: planned for each of the 12).
    assert plans <= 1, (calls, plans)


async def _claim_batches(url: str) -> None:
    """BATCHES claims of 2 on one connection, every other one after the claim before it."""
    store = await Store.open(url, min_size=1, max_size=1)
    try:
        await submit(store, 2 * BATCHES)
        after = None
        for i in range(BATCHES):
            claimed = await store.claim_subtasks("standard", "e1", 2, LEASE,
                                                 after=after if i % 2 else None)
            assert len(claimed) == 2
            after = claimed[-1]
    finally:
        await store.close()


def test_a_session_plans_the_outcome_write_once(server: fleet.OwnedServer) -> None:
    with server.database() as url:
        with psycopg.connect(url, autocommit=True) as admin:  # the cluster's superuser
            _tracked(admin)
        anyio.run(_write_batches, url)
        with psycopg.connect(url, autocommit=True) as conn:
            # The statement that updates the subtasks from a batch's document.
            calls, plans = _calls_and_plans(conn, "jsonb_to_recordset",
                                            "UPDATE taskd.subtasks")
            states = conn.execute("SELECT status, count(*) FROM taskd.subtasks GROUP BY 1"
                                  ).fetchall()
    assert states == [("completed", 2 * BATCHES)]
    assert calls == BATCHES
    # One generic plan for the session (before version 26: planned for each of the 12).
    assert plans <= 1, (calls, plans)


async def _write_batches(url: str) -> None:
    """BATCHES claims of 2 and their outcomes, on one connection: plans are kept a session."""
    store = await Store.open(url, min_size=1, max_size=1)
    try:
        await submit(store, 2 * BATCHES)
        for _ in range(BATCHES):
            claimed = await store.claim_subtasks("standard", "e1", 2, LEASE)
            applied = await store.record_outcomes(
                "e1", [Outcome(c.id, c.attempt, "completed") for c in claimed])
            assert applied == {c.id for c in claimed}
    finally:
        await store.close()
