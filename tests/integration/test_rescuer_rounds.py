"""The fleet's maintenance round: one rescuer pass per interval, whatever the number of daemons,
and no pass lost to a daemon that took a round and died."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest

from taskd.errors import InvalidInput
from taskd.executor.rescuer import ROUND, Rescuer, RescuerConfig
from taskd.metrics import Metrics
from taskd.queue import ExecutorInfo, Store, maintenance
from tests.factories import fetch_one, submit, wait_until

pytestmark = pytest.mark.anyio

INTERVAL = 0.4


def rescuer(store: Store, executor_id: str, interval: float = INTERVAL) -> Rescuer:
    config = RescuerConfig(interval, executor_dead_after=30, retention=86400,
                           executor_id=executor_id)
    r = Rescuer(config, store, {}, Metrics())
    r.signals.passed.arm()
    return r


async def open_stores(database_url: str, n: int) -> list[Store]:
    return [await Store.open(database_url, max_size=2) for _ in range(n)]


async def test_three_daemons_make_one_pass_per_interval(database_url: str, conn: Any) -> None:
    stores = await open_stores(database_url, 3)
    rescuers = [rescuer(s, f"d{i}") for i, s in enumerate(stores)]
    rounds_before = await fetch_one(conn, "SELECT rounds FROM taskd.maintenance_rounds"
                                          " WHERE name = %s", ROUND)
    passes = [0, 0, 0]
    first_at: list[float] = []

    def count(target: int) -> bool:
        for i, r in enumerate(rescuers):
            passes[i] += len(r.signals.passed.taken())
        if sum(passes) and not first_at:
            first_at.append(anyio.current_time())
        return sum(passes) >= target

    try:
        async with anyio.create_task_group() as tg:
            for r in rescuers:
                tg.start_soon(r.run)
            await wait_until(lambda: count(1), within=5, message="a first pass")
            await wait_until(lambda: count(5), within=10 * INTERVAL + 5,
                             message="five passes")
            elapsed = anyio.current_time() - first_at[0]
            tg.cancel_scope.cancel()
    finally:
        for s in stores:
            await s.close()
    # Three daemons each passing every interval would make 5 passes in under 2 intervals.
    # Rounds are at least an interval apart by the database clock (5 % for the host's).
    assert elapsed >= 4 * INTERVAL * 0.95, (elapsed, passes)
    # ... and the round does not wait much longer than its interval to be taken.
    assert elapsed <= 4 * INTERVAL * (1 + 0.2) + 1.0, (elapsed, passes)
    row = await fetch_one(conn, "SELECT rounds, taken_by FROM taskd.maintenance_rounds"
                                " WHERE name = %s", ROUND)
    assert row[0] - rounds_before == sum(passes), (row, passes)
    assert row[1] in {"d0", "d1", "d2"}


async def test_a_round_whose_daemon_died_delays_the_rescue_by_at_most_its_interval(
    store: Store, database_url: str, conn: Any
) -> None:
    """A daemon took the round and died before its pass: the others take the next one when it
    is due, and a dead executor's expired leases are rescued then."""
    await store.register_executor(ExecutorInfo("victim", "default", "host", 1, "test"))
    await submit(store, 3)
    claimed = await store.claim_subtasks("standard", "victim", 3, lease_timeout=0.1)
    assert len(claimed) == 3
    ghost = await maintenance.take_round(store, ROUND, 1.5, "ghost")
    assert ghost.taken and ghost.next_in == pytest.approx(1.5, abs=0.01)
    due = await fetch_one(conn, "SELECT next_at FROM taskd.maintenance_rounds"
                                " WHERE name = %s", ROUND)
    stores = await open_stores(database_url, 2)
    rescuers = [rescuer(s, f"survivor{i}", interval=0.3) for i, s in enumerate(stores)]
    try:
        async with anyio.create_task_group() as tg:
            for r in rescuers:
                tg.start_soon(r.run)
            await wait_until(lambda: fetch_one(
                conn, "SELECT count(*) = 3 FROM taskd.subtasks WHERE status = 'pending'"),
                within=10, message="the victim's leases rescued")
            tg.cancel_scope.cancel()
    finally:
        for s in stores:
            await s.close()
    rescued_at = await fetch_one(conn, "SELECT min(updated_at) FROM taskd.subtasks")
    # Not before the dead daemon's round ended, and soon after: one survivor's wait (0.3 s at
    # most, plus 20 % jitter) and the pass.
    assert rescued_at >= due
    assert rescued_at - due < timedelta(seconds=1.0), rescued_at - due
    assert await fetch_one(conn, "SELECT DISTINCT attempt FROM taskd.subtasks") == 0
    taken_by = await fetch_one(conn, "SELECT taken_by FROM taskd.maintenance_rounds"
                                     " WHERE name = %s", ROUND)
    assert taken_by in {"survivor0", "survivor1"}


async def test_take_round_gives_it_to_one_of_many_at_the_same_moment(store: Store) -> None:
    now = await store.database_now() + timedelta(hours=1)
    got = [await maintenance.take_round(store, ROUND, 5, f"d{i}", now=now) for i in range(3)]
    assert [g.taken for g in got] == [True, False, False]
    assert [g.next_in for g in got] == [5.0, 5.0, 5.0]
    later = now + timedelta(seconds=5)
    assert (await maintenance.take_round(store, ROUND, 5, "d2", now=later)).taken


async def test_a_deleted_round_row_is_put_back(store: Store, conn: Any) -> None:
    await conn.execute("DELETE FROM taskd.maintenance_rounds")
    assert (await maintenance.take_round(store, ROUND, 5, "d0")).taken
    assert await fetch_one(conn, "SELECT taken_by FROM taskd.maintenance_rounds") == "d0"


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf")])
async def test_a_round_interval_that_is_not_a_positive_number_is_refused(
    store: Store, conn: Any, interval: float
) -> None:
    before = await fetch_one(conn, "SELECT rounds FROM taskd.maintenance_rounds")
    with pytest.raises(InvalidInput, match="interval"):
        await maintenance.take_round(store, ROUND, interval, "d0")
    assert await fetch_one(conn, "SELECT rounds FROM taskd.maintenance_rounds") == before
