"""The claim function (taskd.claim_subtasks, version 27) takes the rows the claim statement
takes, in the same order, under the same lease: the executor's plain claim moved into it to
keep one plan a session, and claim_subtasks (the statement) stays for claims with a
cluster_max. Compared here on random backlogs, resume points and pauses: each claim runs as
the statement first, rolled back, then as the function."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taskd.queue.queries import query

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
COLUMNS = ("id", "task_id", "queue", "kind", "priority", "payload", "state", "attempt",
           "max_attempts", "run_after", "wait")


async def _backlog(conn: Any, rng: random.Random) -> None:
    """Two queues' subtasks of mixed priorities, ready times (some later than NOW) and crash
    counts (2 or more: a suspect, claimed alone elsewhere)."""
    await conn.execute("INSERT INTO taskd.tasks (queue, kind, total) VALUES ('a', 'noop', 80)")
    for i in range(80):
        await conn.execute(
            "INSERT INTO taskd.subtasks (task_id, queue, kind, priority, run_after, crashes,"
            " payload) VALUES (1, %s, 'noop', %s, %s, %s, %s)",
            (rng.choice("aab"), rng.choice([-1, 0, 0, 1, 2]),
             NOW + timedelta(seconds=rng.choice([-30, -20, -10, -10, -5, -1, 0, 5])),
             rng.choice([0, 0, 0, 1, 2]), f'{{"n": {i}}}'))


async def _claim(conn: Any, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query(name), params)
    return list(await cur.fetchall())


@pytest.mark.parametrize("seed", range(6))
async def test_the_function_claims_what_the_statement_claims(conn: Any, seed: int) -> None:
    rng = random.Random(seed)
    await _backlog(conn, rng)
    last: dict[str, tuple[Any, ...] | None] = {"a": None, "b": None}
    claimed_in_all = 0
    for round_ in range(24):
        queue = rng.choice("ab")
        paused = rng.random() < 0.1
        await conn.execute(
            "INSERT INTO taskd.queue_controls (queue, paused) VALUES (%s, %s)"
            " ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused", (queue, paused))
        after = last[queue] if rng.random() < 0.7 else None
        at = NOW + timedelta(seconds=rng.choice([0, 0, 2, 6]))
        params = {"queue": queue, "executor_id": f"e{round_}", "limit": rng.randint(1, 9),
                  "lease_timeout": 30.0, "cluster_max": None, "now": at,
                  "suspect_after": 2, "rate_limit": None, "rate_period": None,
                  "after_priority": None if after is None else after[4],
                  "after_run_after": None if after is None else after[9],
                  "after_id": None if after is None else after[0]}
        async with conn.transaction(force_rollback=True):
            expected = await _claim(conn, "claim_subtasks", params)
        got = await _claim(conn, "claim_subtasks_plain", params)
        assert [dict(zip(COLUMNS, row, strict=True)) for row in got] == [
            dict(zip(COLUMNS, row, strict=True)) for row in expected], (seed, round_, params)
        if paused:
            assert got == []
        if got:
            last[queue] = got[-1]
        claimed_in_all += len(got)
    cur = await conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE lease_expires_at - started_at"
        " = interval '30 seconds') FROM taskd.subtasks WHERE status = 'processing'")
    assert await cur.fetchone() == (claimed_in_all, claimed_in_all)
    assert claimed_in_all > 20  # the comparison saw claims, not only empty ones
