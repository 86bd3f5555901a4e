"""The executor's outcome write keeps one plan a session (migration 26).

The daemon's sessions plan every statement for its parameters (``plan_cache_mode =
force_custom_plan``, which the claims need); the outcome write, run for every batch, was
planned anew each time: ~0.25 ms a batch, most of a small batch's cost. Counted here with
``pg_stat_statements`` (planning tracked, nested statements too) on the fleet bench's own
cluster (Debian's PostgreSQL 15): the shared server does not load it, nor has pgserver's build.
"""

from __future__ import annotations

from collections.abc import Iterator

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


def test_a_session_plans_the_outcome_write_once(server: fleet.OwnedServer) -> None:
    with server.database() as url:
        with psycopg.connect(url, autocommit=True) as admin:  # the cluster's superuser
            name = admin.info.dbname
            admin.execute(f'ALTER DATABASE "{name}" SET pg_stat_statements.track = \'all\'')
            admin.execute(f'ALTER DATABASE "{name}" SET pg_stat_statements.track_planning = on')
        anyio.run(_write_batches, url)
        with psycopg.connect(url, autocommit=True) as conn:
            # The statement that updates the subtasks from a batch's document, wherever it
            # runs (top level, or inside a function): its calls, and how often it was planned.
            calls, plans = conn.execute(
                "SELECT sum(calls), sum(plans) FROM pg_stat_statements"
                " WHERE query LIKE '%jsonb_to_recordset%' AND query LIKE '%UPDATE taskd.subtasks%'"
                "   AND query NOT LIKE '-- taskd schema, version%'"  # the migration itself
                "   AND query NOT LIKE '%pg_stat_statements%'").fetchone()  # type: ignore[misc]
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
