"""cluster_max: the most subtasks of one queue processing across every executor at once.

Enforced inside the claim (an advisory lock per queue, then count and claim in one statement).
These tests show that racing claimers never exceed it, that a capped claim waits for one in
flight, and, from the plan, that queues without cluster_max never run the count.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import anyio
import pytest
from psycopg import sql

from taskd.queue import Outcome, Store
from taskd.queue.queries import query
from tests.factories import CLAIM_FROM_HEAD, fetch_one, submit
from tests.plans import explain, plan_nodes, plan_root

pytestmark = pytest.mark.anyio

LEASE = 30.0

# claim_subtasks's parameters with their types, for a PREPARE of the same text.
CLAIM_PARAMS = {"queue": "text", "executor_id": "text", "limit": "integer",
                "lease_timeout": "float8", "cluster_max": "integer", "now": "timestamptz",
                "after_priority": "integer", "after_run_after": "timestamptz", "after_id": "bigint",
                "suspect_after": "integer", "rate_limit": "integer", "rate_period": "integer"}


def count_subplans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The subplans that count processing rows: InitPlans that aggregate rows of subtasks (not
    the rate limit's count of the claimed rows)."""
    return [n for n in plan_nodes(plan)
            if n.get("Parent Relationship") == "InitPlan"
            and n["Node Type"] == "Aggregate"
            and any(m.get("Relation Name") == "subtasks" for m in plan_nodes(n))]


async def explain_claim(conn: Any, cluster_max: int | None, plan_cache_mode: str) -> Any:
    """EXPLAIN ANALYZE of claim_subtasks as a prepared statement, rolled back."""
    names = list(CLAIM_PARAMS)
    text = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m[1]) + 1}",
                  query("claim_subtasks").as_string(None))
    args = {"queue": "standard", "executor_id": "e1", "limit": 3, "lease_timeout": 60.0,
            "cluster_max": cluster_max, "now": None, **CLAIM_FROM_HEAD}
    async with conn.transaction(force_rollback=True):
        await conn.execute(f"SET LOCAL plan_cache_mode = {plan_cache_mode}")
        await conn.execute(f"PREPARE claim_probe ({', '.join(CLAIM_PARAMS.values())}) AS {text}")
        try:
            # EXECUTE's arguments cannot be bound parameters: render them as literals.
            cur = await conn.execute(sql.SQL(
                "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim_probe({})"
            ).format(sql.SQL(", ").join(sql.Literal(args[name]) for name in CLAIM_PARAMS)))
            raw = (await cur.fetchone())[0]
        finally:
            await conn.execute("DEALLOCATE claim_probe")
    return plan_root(raw)


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_queues_without_cluster_max_never_run_the_count(
    store: Store, conn: Any, plan_cache_mode: str
) -> None:
    await submit(store, 10)
    await store.claim_subtasks("standard", "e0", 2, LEASE)  # something for the count to find
    capped = await explain_claim(conn, 4, plan_cache_mode)
    uncapped = await explain_claim(conn, None, plan_cache_mode)

    # With cluster_max, the count runs once per claim: the test can see it.
    [count] = count_subplans(capped)
    assert count["Actual Loops"] == 1, json.dumps(capped)
    # Without it: a custom plan (the first executions) folds the count away; the generic plan
    # (prepared statements, later on) keeps it but never executes it.
    found = count_subplans(uncapped)
    if plan_cache_mode == "force_custom_plan":
        assert found == [], json.dumps(uncapped)
    else:
        assert len(found) == 1, json.dumps(uncapped)
        assert all(n["Actual Loops"] == 0 for n in plan_nodes(found[0])), json.dumps(uncapped)
    # Both really claimed: the capped one 4 - 2 processing, the other its whole limit of 3.
    assert (capped["Actual Rows"], uncapped["Actual Rows"]) == (2, 3)


async def test_racing_claimers_never_exceed_cluster_max(
    database_url: str, store: Store, conn: Any
) -> None:
    # Inside the database, after every UPDATE statement on subtasks (each claim, each
    # completion), record how many of the queue's subtasks are processing. A claim sees what
    # was committed before it plus its own rows: exactly what the cap is about.
    await conn.execute("""
        CREATE TABLE public.observed (n bigint NOT NULL);
        CREATE FUNCTION public.observe() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO public.observed
            SELECT count(*) FROM taskd.subtasks
             WHERE status = 'processing' AND queue = 'standard';
            RETURN NULL;
        END $$;
        CREATE TRIGGER observe AFTER UPDATE ON taskd.subtasks
            FOR EACH STATEMENT EXECUTE FUNCTION public.observe();
    """)
    total, cap = 240, 4
    await submit(store, total)
    await submit(store, 20, queue="other")  # another queue's rows do not count
    await store.claim_subtasks("other", "e-other", 20, LEASE)
    done: list[int] = []
    claims_seen: list[int] = []

    async def claimer(name: str) -> None:
        own = await Store.open(database_url, max_size=1)
        rng = random.Random(name)
        try:
            while len(done) < total:
                batch = await own.claim_subtasks("standard", name, 3, LEASE, cluster_max=cap)
                if not batch:
                    await anyio.sleep(0.001)  # at the cap: let the others finish some
                    continue
                claims_seen.append(len(batch))
                await anyio.sleep(rng.uniform(0, 0.004))  # the "handler"
                await own.record_outcomes(
                    name, [Outcome(s.id, s.attempt, "completed", "{}") for s in batch]
                )
                done.extend(s.id for s in batch)
        finally:
            await own.close()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(claimer, f"claimer-{i}")

    assert sorted(done) == sorted(set(done)) and len(done) == total
    observed = [row[0] for row in await (await conn.execute(
        "SELECT n FROM public.observed")).fetchall()]
    assert len(observed) >= 2 * len(claims_seen)  # one row per claim and per completion
    assert max(observed) == cap  # reached, never passed
    assert await fetch_one(
        conn, "SELECT count(*) FROM taskd.subtasks WHERE queue = 'standard'"
        " AND status = 'completed'") == total


async def wait_for_a_lock_waiter(conn: Any) -> None:
    """Poll pg_locks until a session waits for an advisory lock (fails after 10 s)."""
    with anyio.fail_after(10):
        while True:
            if await fetch_one(conn, "SELECT count(*) FROM pg_locks"
                               " WHERE locktype = 'advisory' AND NOT granted"):
                return
            await anyio.sleep(0.01)


async def test_a_capped_claim_waits_for_a_claim_in_flight(store: Store, conn: Any) -> None:
    # Without the lock, a second claim would not see the first one's uncommitted rows and
    # both would take 4. With it, the second waits, then sees 4 processing and takes none.
    await submit(store, 10)
    params = {"queue": "standard", "executor_id": "e1", "limit": 4, "lease_timeout": LEASE,
              "cluster_max": 4, "now": None, **CLAIM_FROM_HEAD}
    result: list[int] = []

    async def second() -> None:
        claimed = await store.claim_subtasks("standard", "e2", 4, LEASE, cluster_max=4)
        result.append(len(claimed))

    async with anyio.create_task_group() as tg:
        async with conn.transaction():
            await conn.execute(query("lock_queue_claims"), params)
            cur = await conn.execute(query("claim_subtasks"), params)
            assert len(await cur.fetchall()) == 4
            tg.start_soon(second)
            await wait_for_a_lock_waiter(conn)
            assert result == []  # still waiting while the first claim is open
    assert result == [0]
    assert await fetch_one(
        conn, "SELECT count(*) FROM taskd.subtasks WHERE status = 'processing'") == 4


async def test_the_lock_is_per_queue(store: Store, conn: Any) -> None:
    # A capped claim in flight on one queue does not hold up capped claims of another.
    await submit(store, 10)
    await submit(store, 10, queue="images")
    params = {"queue": "standard", "executor_id": "e1", "limit": 4, "lease_timeout": LEASE,
              "cluster_max": 4, "now": None, **CLAIM_FROM_HEAD}
    async with conn.transaction():
        await conn.execute(query("lock_queue_claims"), params)
        with anyio.fail_after(5):
            claimed = await store.claim_subtasks("images", "e2", 10, LEASE, cluster_max=3)
    assert len(claimed) == 3


async def test_cluster_max_counts_only_processing_rows_of_its_queue(store: Store) -> None:
    await submit(store, 10)
    first = await store.claim_subtasks("standard", "e1", 10, LEASE, cluster_max=4)
    assert len(first) == 4
    # Finished and retried rows free their places; pending ones do not take any.
    await store.record_outcomes("e1", [Outcome(first[0].id, 1, "completed", "{}"),
                                       Outcome(first[1].id, 1, "retry", delay=0),
                                       Outcome(first[2].id, 1, "failed", error="x")])
    again = await store.claim_subtasks("standard", "e2", 10, LEASE, cluster_max=4)
    assert len(again) == 3
    assert await store.claim_subtasks("standard", "e3", 10, LEASE, cluster_max=4) == []
    # The limit still applies under the cap.
    await store.record_outcomes("e2", [Outcome(s.id, s.attempt, "completed", "{}")
                                       for s in again])
    assert len(await store.claim_subtasks("standard", "e3", 1, LEASE, cluster_max=4)) == 1


@pytest.mark.slow
async def test_a_capped_claim_stays_on_indexes_with_a_long_backlog(conn: Any) -> None:
    # A capped queue is the one whose backlog grows (its external API is the bottleneck).
    await conn.execute("""
        INSERT INTO taskd.tasks (queue, kind, total) VALUES ('standard', 'noop', 100000);
        INSERT INTO taskd.subtasks (task_id, queue, kind)
        SELECT 1, 'standard', 'noop' FROM generate_series(1, 200000);
    """)
    await conn.execute("VACUUM ANALYZE taskd.subtasks")
    params = {"queue": "standard", "executor_id": "e1", "limit": 10, "lease_timeout": 60.0,
              "cluster_max": 100, "now": None, **CLAIM_FROM_HEAD}
    plan = await explain(conn, "claim_subtasks", params)
    scans = [n for n in plan_nodes(plan)
             if n.get("Relation Name") == "subtasks" and n["Node Type"] == "Seq Scan"]
    assert scans == [], json.dumps(plan)
