"""Claims of several queues in one statement: Store.claim_subtasks_of_queues and the claimer
that gathers the producers' claims into it."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from taskd.errors import DatabaseError
from taskd.executor.claimer import Claimer, ClaimerConfig
from taskd.executor.daemon import Daemon
from taskd.queue.controls import pause_queue, register_queues
from taskd.queue.store import QueueClaim, Store
from taskd.settings import QueueSettings, Settings
from tests.factories import fetch_one, insert_subtasks, submit, wait_until

pytestmark = pytest.mark.anyio

LEASE = 60.0


async def test_each_queue_gets_its_own_limit_in_claim_order(store: Store, conn: Any) -> None:
    a_low = await submit(store, 3, queue="a")
    a_high = await submit(store, 2, queue="a", priority=5)
    await submit(store, 5, queue="b")
    await submit(store, 2, queue="c", delay=60)  # not ready yet
    await insert_subtasks(conn, queue="c", crashes=2)  # a suspect: the quarantine's
    await submit(store, 2, queue="d")
    await register_queues(store, {"d": None})
    await pause_queue(store, "d")

    got = await store.claim_subtasks_of_queues(
        [QueueClaim("a", 3), QueueClaim("b", 10), QueueClaim("c", 5), QueueClaim("d", 5),
         QueueClaim("e", 5), QueueClaim("f", 0)], "e1", LEASE)

    assert set(got) == {"a", "b"}
    assert [(s.task_id, s.priority) for s in got["a"]] == [(a_high, 5), (a_high, 5), (a_low, 0)]
    assert len(got["b"]) == 5
    assert all(s.attempt == 1 and s.queue == q for q, rows in got.items() for s in rows)
    assert await fetch_one(conn, "SELECT count(*) FROM taskd.subtasks WHERE status ="
                                 " 'processing' AND locked_by = 'e1'"
                                 " AND lease_expires_at > now() + interval '59 s'") == 8


async def test_each_queue_resumes_after_its_own_last_subtask(store: Store) -> None:
    await submit(store, 4, queue="a", priority=1)
    await submit(store, 4, queue="a")
    await submit(store, 4, queue="b")
    first = await store.claim_subtasks_of_queues(
        [QueueClaim("a", 3), QueueClaim("b", 2)], "e1", LEASE)
    # A row of higher priority that arrives meanwhile is not seen by a resumed claim.
    await submit(store, 1, queue="a", priority=9)
    then = await store.claim_subtasks_of_queues(
        [QueueClaim("a", 3, first["a"][-1]), QueueClaim("b", 10, first["b"][-1])], "e1", LEASE)
    assert [s.priority for s in then["a"]] == [1, 0, 0]
    assert then["a"][0].id > first["a"][-1].id
    assert len(then["b"]) == 2
    head = await store.claim_subtasks_of_queues([QueueClaim("a", 1)], "e1", LEASE)
    assert [s.priority for s in head["a"]] == [9]


async def test_concurrent_claims_of_many_queues_take_each_subtask_once(
    database_url: str, store: Store,
) -> None:
    queues = [f"q{i}" for i in range(10)]
    for queue in queues:
        await submit(store, 300, queue=queue)
    taken: list[int] = []

    async def claim_until_empty(name: str) -> None:
        own = await Store.open(database_url, max_size=1)
        try:
            while got := await own.claim_subtasks_of_queues(
                    [QueueClaim(q, 7) for q in queues], name, LEASE):
                assert all(len(rows) <= 7 for rows in got.values())
                taken.extend(s.id for rows in got.values() for s in rows)
        finally:
            await own.close()

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(claim_until_empty, f"c{i}")
    assert len(taken) == len(set(taken)) == 3000


async def test_claims_that_wait_together_go_in_one_statement(store: Store) -> None:
    queues = [f"q{i:02d}" for i in range(20)]
    for queue in queues:
        await submit(store, 5, queue=queue)
    claimer = Claimer(ClaimerConfig(LEASE), store, "e1")
    claimer.signals.statement.arm()
    got: dict[str, list[int]] = {}

    async def claim(queue: str) -> None:
        got[queue] = [s.id for s in await claimer.claim(queue, 3)]

    async with anyio.create_task_group() as tg:
        tg.start_soon(claimer.run)
        for queue in queues:
            tg.start_soon(claim, queue)
        await wait_until(lambda: len(got) == len(queues), message="every claim answered")
        tg.cancel_scope.cancel()
    # Claims that arrive while none runs go at once; those that arrive meanwhile, together.
    statements = claimer.signals.statement.taken()
    assert sum(statements) == 20 and len(statements) <= 2, statements
    assert all(len(ids) == 3 for ids in got.values())
    assert len({i for ids in got.values() for i in ids}) == 60


async def _drain(database_url: str, store: Store, conn: Any, *, queues: list[str],
                 per_queue: int, executor_id: str, armed: bool = False) -> Daemon:
    """``per_queue`` noops in each of ``queues`` (10 slots each), drained by a daemon serving
    those queues only; with ``armed``, its store records the statements it runs."""
    for queue in queues:
        await submit(store, per_queue, queue=queue)
    settings = Settings(
        database_url=database_url, metrics_addr="127.0.0.1:0", executor_id=executor_id,
        handlers={}, poll_interval=0.2, shutdown_grace=5,
        queues={**{q: QueueSettings(initial=10, max=10) for q in queues},
                "standard": QueueSettings(enabled=False), "lumina": QueueSettings(enabled=False)},
    )
    daemon = Daemon(settings)
    total = per_queue * len(queues)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        if armed:
            await wait_until(lambda: daemon._store is not None, message="the daemon's store")
            assert daemon._store is not None
            daemon._store.signals.statements.arm()

        async def done() -> bool:
            return await fetch_one(conn, "SELECT count(*) FROM taskd.subtasks"
                                         " WHERE status = 'completed'") == total

        await wait_until(done, within=60, message=f"{total} subtasks completed")
        daemon.stopping.set()
    return daemon


async def test_a_daemon_drains_fifty_queues_with_fewer_claim_statements_than_claims(
    database_url: str, store: Store, conn: Any,
) -> None:
    daemon = await _drain(database_url, store, conn, queues=[f"q{i:02d}" for i in range(1, 51)],
                          per_queue=100, executor_id="many", armed=True)
    assert daemon._store is not None
    made = Counter(daemon._store.signals.statements.taken())
    # 5,000 subtasks in claims of at most 10 a queue: at least 500 claims, far fewer statements.
    statements = (made["claim_subtasks"] + made["claim_subtasks_plain"]
                  + made["claim_subtasks_of_queues"])
    assert made["claim_subtasks_of_queues"] > 0, made
    assert statements <= 250, made


async def test_through_the_claimer_a_producer_claims_its_whole_limit(
    database_url: str, store: Store, conn: Any,
) -> None:
    # Claims of half the limit paid a producer's round (wake, claim, hand on) per 5 rows
    # here, per 20 in bench queues' 50 queues of 40 slots: 0.73-0.75 x one queue's drain.
    await _drain(database_url, store, conn, queues=[f"q{i:02d}" for i in range(1, 11)],
                 per_queue=200, executor_id="whole")
    # The rows of one queue that one statement claimed share its started_at (now()).
    claims = await fetch_one(conn, "SELECT count(DISTINCT (queue, started_at))"
                                   " FROM taskd.subtasks")
    assert claims <= 2000 / 10 * 1.5, f"{claims} claims of 10 slots for 2,000 subtasks"


async def test_a_busy_claimer_waits_a_moment_for_more_claims_to_join(store: Store) -> None:
    queues = [f"q{i}" for i in range(6)]
    for queue in queues:
        await submit(store, 2, queue=queue)
    claimer = Claimer(ClaimerConfig(LEASE, gather=0.5, busy_within=60), store, "e1")
    claimer.signals.statement.arm()
    answered: list[str] = []

    async def claim(queue: str) -> None:
        assert len(await claimer.claim(queue, 1)) == 1
        answered.append(queue)

    async with anyio.create_task_group() as tg:
        tg.start_soon(claimer.run)
        await claim(queues[0])  # idle: at once, alone
        assert await claimer.signals.statement.wait() == 1
        for queue in queues[1:]:  # busy: the five that come within the gather go together
            tg.start_soon(claim, queue)
            await anyio.sleep(0.02)
        assert await claimer.signals.statement.wait() == 5
        await wait_until(lambda: len(answered) == 6, message="every claim answered")
        tg.cancel_scope.cancel()


async def test_claims_waiting_when_the_claimer_stops_end_with_an_error(store: Store) -> None:
    claimer = Claimer(ClaimerConfig(LEASE, gather=30, busy_within=60), store, "e1")
    await submit(store, 2, queue="a")
    failed: list[BaseException] = []

    async def claim() -> None:
        # Shielded, as the producer's: only the claimer's answer ends the wait (or 5 s).
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + 5):
            try:
                await claimer.claim("a", 1)
            except DatabaseError as exc:
                failed.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(claimer.run)
            await claimer.claim("a", 1)
            tg.start_soon(claim)  # waits out the gather: the claimer is busy
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()  # the claimer stops mid-gather
    assert len(failed) == 1
