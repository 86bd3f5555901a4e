"""The producer in-process against a real database: claims, worker tasks, shutdown."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from taskd.executor.capacity import Capacity
from taskd.executor.claimer import Claimer, ClaimerConfig
from taskd.executor.completer import Completer
from taskd.executor.gate import ClaimGate
from taskd.executor.notifier import Notifier
from taskd.executor.producer import Producer, ProducerConfig
from taskd.executor.runner import Runner
from taskd.executor.running import RunningSet, RunningSubtask
from taskd.executor.wakeup import Wakeup
from taskd.handlers.base import SubtaskContext
from taskd.handlers.clients import http_clients
from taskd.handlers.registry import HandlerRegistry
from taskd.metrics import Metrics
from taskd.queue.store import Store
from taskd.settings import QueueSettings, Settings
from tests.factories import fetch_one, submit, wait_until

pytestmark = pytest.mark.anyio

EXECUTOR = "producer-test"


@dataclass
class Blocking:
    """A handler kind that holds every subtask until released, counting how many run at once."""

    release: anyio.Event
    running: int = 0
    most: int = 0
    # (ctx.deadline, when the handler was cancelled) for each handler cut short
    cut_short: list[tuple[float, float]] = field(default_factory=list)

    async def __call__(self, ctx: SubtaskContext) -> Any:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cut_short.append((ctx.deadline, anyio.current_time()))
            raise
        finally:
            self.running -= 1
        return ctx.payload


@dataclass
class Rig:
    producer: Producer
    completer: Completer
    running: RunningSet
    blocking: Blocking
    runner: Runner
    queues: dict[str, QueueSettings]

    def configure(self, **changes: Any) -> None:
        """Change the producer's config; ``settings`` changes the queue's settings for the
        runner too."""
        if "settings" in changes:
            self.queues["standard"] = changes["settings"]
        self.producer.config = replace(self.producer.config, **changes)


WORKER = "taskd producer standard worker"


def workers() -> int:
    """The producer's worker tasks alive now, by their name (running or parked)."""
    return sum(1 for task in asyncio.all_tasks() if task.get_name() == WORKER)


@pytest.fixture
async def rig(store: Store) -> AsyncIterator[Rig]:
    registry = HandlerRegistry.load(Settings(handlers={}), discovered=[])
    blocking = Blocking(anyio.Event())
    registry.register("block", blocking, "settings", "tests:block")
    metrics = Metrics()
    completer = Completer(store, EXECUTOR, metrics)
    running = RunningSet()
    queues = {"standard": QueueSettings()}
    async with http_clients(shards=1) as http:
        runner = Runner(registry, queues, store, completer, metrics, http,
                        executor_id=EXECUTOR, thread_limiter=anyio.CapacityLimiter(4))
        config = ProducerConfig("standard", queues["standard"], lease_timeout=60,
                                poll_interval=0.05, idle_worker_seconds=0.3)
        producer = Producer(config, store, EXECUTOR, Capacity(20), Wakeup(), ClaimGate(),
                            completer, running, runner, metrics)
        yield Rig(producer, completer, running, blocking, runner, queues)


async def run_until(rig: Rig, condition: Any, message: str) -> None:
    """Run the producer and the completer until ``condition()``, then stop them."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.completer.run)
        tg.start_soon(rig.producer.run)
        await wait_until(condition, message=message)
        rig.producer.stop_claiming()
        await rig.running.wait_empty()
        await rig.completer.flush()
        tg.cancel_scope.cancel()


async def completed(conn: Any) -> int:
    return int(await fetch_one(
        conn, "SELECT count(*) FROM taskd.subtasks WHERE status = 'completed'"))


async def all_completed(conn: Any, total: int) -> bool:
    return await completed(conn) == total


async def test_handlers_that_block_each_get_a_worker_up_to_the_limit(
    rig: Rig, store: Store, conn: Any
) -> None:
    await submit(store, 50, kind="block")
    most_workers = 0

    async def release_when_full() -> None:
        nonlocal most_workers
        await wait_until(lambda: rig.blocking.running == 20, message="20 handlers running")
        most_workers = workers()
        rig.blocking.release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_when_full)
        await run_until(rig, lambda: all_completed(conn, 50), "50 subtasks completed")
    assert rig.blocking.most == 20
    # Twenty blocked at once needed twenty workers; none beyond the limit.
    assert most_workers == 20


async def test_each_attempts_deadline_is_the_queues_timeout_after_its_claim(
    rig: Rig, store: Store, conn: Any
) -> None:
    await submit(store, 20, kind="block")
    timeout = rig.producer.config.settings.timeout
    rig.producer.signals.timed_claims.arm()
    before = anyio.current_time()
    deadlines: list[float] = []

    async def look_when_full() -> None:
        await wait_until(lambda: rig.blocking.running == 20, message="20 handlers running")
        deadlines.extend(entry.deadline for entry in rig.running.entries())
        rig.blocking.release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(look_when_full)
        await run_until(rig, lambda: all_completed(conn, 20), "20 subtasks completed")
    after = anyio.current_time()
    assert len(deadlines) == 20
    assert all(before + timeout <= d <= after + timeout for d in deadlines), deadlines
    # One claim took all 20: they share its time, whenever each handler started.
    assert len(set(deadlines)) == 1, deadlines
    assert rig.producer.signals.timed_claims.taken()[-1] == 0


async def test_handlers_past_their_claims_deadline_are_cut_short_and_retried(
    rig: Rig, store: Store, conn: Any
) -> None:
    rig.configure(settings=QueueSettings(timeout=0.3, retry_base=60))
    rig.producer.signals.timed_claims.arm()
    rig.producer.capacity.set_limit(3)  # 7 subtasks: three claims, three deadlines
    await submit(store, 7, kind="block")

    async def timed_out() -> bool:
        return int(await fetch_one(
            conn, "SELECT count(*) FROM taskd.subtasks WHERE status = 'pending' AND attempt = 1"
                  " AND error = 'HandlerTimeout: block handler ran longer than the queue''s"
                  " timeout of 0.3 s'")) == 7

    await run_until(rig, timed_out, "7 attempts timed out")
    cut = rig.blocking.cut_short
    assert len(cut) == 7
    assert len({deadline for deadline, _ in cut}) == 3, cut
    # Cancelled at its claim's deadline, not before (the bound above is only generous).
    assert all(deadline <= at < deadline + 5 for deadline, at in cut), cut
    assert rig.producer.signals.timed_claims.taken()[-1] == 0 and len(rig.running) == 0


async def test_a_handler_that_ends_before_its_deadline_leaves_nothing_to_time(
    rig: Rig, store: Store, conn: Any
) -> None:
    rig.configure(settings=QueueSettings(timeout=30))
    timed_claims = rig.producer.signals.timed_claims
    timed_claims.arm()
    await submit(store, 5, kind="block")

    async def release_when_full() -> None:
        await wait_until(lambda: rig.blocking.running == 5, message="5 handlers running")
        assert timed_claims.taken()[-1] == 1
        rig.blocking.release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_when_full)
        await run_until(rig, lambda: all_completed(conn, 5), "5 subtasks completed")
    assert timed_claims.taken()[-1] == 0
    assert rig.blocking.cut_short == []


@dataclass
class ScopeRecorder:
    """Handlers for the worker's scopes: ``record`` notes its scope; ``stubborn`` blocks and,
    cancelled, swallows the cancellation and returns."""

    scopes: list[anyio.CancelScope] = field(default_factory=list)
    stubborn_started: anyio.Event = field(default_factory=anyio.Event)

    async def record(self, ctx: SubtaskContext) -> Any:
        self.scopes.append(ctx.cancel_scope)
        await anyio.lowlevel.checkpoint()  # a cancelled scope would cut it here
        return {}

    async def stubborn(self, ctx: SubtaskContext) -> Any:
        self.stubborn_started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            return {"swallowed": True}


async def ready_entries(
    rig: Rig, store: Store, kinds: list[str]
) -> deque[RunningSubtask]:
    """Claim one subtask of each kind, in order, into a ready queue."""
    ready: deque[RunningSubtask] = deque()
    for kind in kinds:
        await submit(store, 1, kind=kind)
        [claimed] = await store.claim_subtasks("standard", EXECUTOR, 1, 60.0)
        ready.append(rig.running.add(claimed))
    return ready


async def run_ready(rig: Rig, ready: deque[RunningSubtask]) -> None:
    """What one worker does with the ready queue, as if another were on its way (so this one
    runs them all)."""
    await rig.runner.run_ready(ready, more=lambda: None,
                               done=lambda entry: rig.running.remove(entry.subtask.id))


@pytest.fixture
def recorder(rig: Rig) -> ScopeRecorder:
    recorder = ScopeRecorder()
    rig.runner.registry.register("record", recorder.record, "settings", "tests:record")
    rig.runner.registry.register("stubborn", recorder.stubborn, "settings", "tests:stubborn")
    return recorder


async def outcomes(rig: Rig, conn: Any) -> list[tuple[str, str]]:
    await rig.completer.flush()
    cur = await conn.execute("SELECT kind, status FROM taskd.subtasks ORDER BY id")
    return [(kind, status) for kind, status in await cur.fetchall()]


async def test_a_worker_runs_ready_subtasks_back_to_back_in_one_scope(
    rig: Rig, store: Store, conn: Any, recorder: ScopeRecorder
) -> None:
    await run_ready(rig, await ready_entries(rig, store, ["record", "record", "record"]))
    assert len(recorder.scopes) == 3 and len(set(map(id, recorder.scopes))) == 1
    assert await outcomes(rig, conn) == [("record", "completed")] * 3


async def test_after_a_stop_the_next_subtasks_run_in_a_new_scope_and_a_waiting_one_never_runs(
    rig: Rig, store: Store, conn: Any, recorder: ScopeRecorder
) -> None:
    ready = await ready_entries(rig, store, ["stubborn", "record", "record"])
    stubborn, waiting, _ = ready
    waiting.stop("cancelled")  # stopped while it waits: its handler never starts
    async with anyio.create_task_group() as runs:
        runs.start_soon(run_ready, rig, ready)
        await recorder.stubborn_started.wait()
        stubborn.stop("cancelled")
    # The stubborn handler swallowed its cancellation and returned: its result stands, and
    # its cancelled scope ended with it, before the next subtask.
    assert len(ready) == 2 and recorder.scopes == []
    await run_ready(rig, ready)
    assert len(recorder.scopes) == 1 and not recorder.scopes[0].cancel_called
    assert await outcomes(rig, conn) == [
        ("stubborn", "completed"), ("record", "cancelled"), ("record", "completed")]


async def test_claims_wait_while_the_completers_backlog_is_full(
    rig: Rig, store: Store, conn: Any
) -> None:
    # Handlers free their slots as they hand outcomes over; without a bound, claims would
    # run ahead of writes that cannot keep up (here: the completer is not running at all).
    await submit(store, 30)
    rig.completer.config = replace(rig.completer.config, max_backlog=5)

    async def claimed() -> int:
        return int(await fetch_one(
            conn, "SELECT count(*) FROM taskd.subtasks WHERE status <> 'pending'"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.producer.run)
        await wait_until(lambda: rig.completer.backlog >= 20, message="one claim's outcomes")
        await anyio.wait_all_tasks_blocked()
        assert await claimed() == 20  # the limit's worth, then nothing until there is room
        tg.start_soon(rig.completer.run)
        await wait_until(lambda: all_completed(conn, 30), message="30 subtasks completed")
        rig.producer.stop_claiming()
        tg.cancel_scope.cancel()  # the completer runs until cancelled
    assert rig.completer.backlog == 0


@pytest.mark.parametrize("through_claimer", [False, True], ids=["alone", "through-claimer"])
@pytest.mark.parametrize(("limit", "claims"), [(4, [4]), (8, [5, 3]), (20, [10, 10])])
async def test_a_claim_takes_a_small_limit_whole_and_half_of_a_large_one(
    rig: Rig, store: Store, conn: Any, limit: int, claims: list[int], through_claimer: bool,
) -> None:
    # Scaled down: the whole limit up to 5, half of it above that, never more than 10.
    rig.configure(batch_whole=5, batch_max=10)
    rig.producer.capacity.set_limit(limit)
    claimer = Claimer(ClaimerConfig(60), store, EXECUTOR) if through_claimer else None
    rig.producer.claimer = claimer
    await submit(store, limit, kind="block")

    async def release_when_full() -> None:
        await wait_until(lambda: rig.blocking.running == limit, message=f"{limit} running")
        rig.blocking.release.set()

    async with anyio.create_task_group() as tg:
        if claimer is not None:
            tg.start_soon(claimer.run)
        tg.start_soon(release_when_full)
        await run_until(rig, lambda: all_completed(conn, limit), f"{limit} completed")
        tg.cancel_scope.cancel()
    # One claim, one transaction: its subtasks share the claim's started_at.
    cur = await conn.execute("SELECT count(*) FROM taskd.subtasks GROUP BY started_at"
                             " ORDER BY started_at")
    assert [n for (n,) in await cur.fetchall()] == claims


async def test_claims_resume_after_the_last_until_a_wake_up_the_interval_or_the_end(
    rig: Rig, store: Store
) -> None:
    producer = rig.producer
    rig.configure(full_claim_interval=3600.0)
    backlog = await submit(store, 10)

    async def claim(n: int) -> list[int]:
        return [c.task_id for c in await producer._claim(n)]

    assert await claim(4) == [backlog] * 4
    # Submitted without a wake-up reaching the producer: the next claim resumes past it.
    high = await submit(store, 1, priority=9)
    assert await claim(4) == [backlog] * 4
    producer.wakeup.set()  # what the notifier does for each submit
    assert await claim(1) == [high]
    assert await claim(1) == [backlog]  # lower priorities come after the last one claimed
    higher = await submit(store, 1, priority=9)
    rig.configure(full_claim_interval=0.0)  # the interval has passed
    assert await claim(1) == [higher]
    rig.configure(full_claim_interval=3600.0)
    highest = await submit(store, 1, priority=20)
    # One left after the last claimed: the claim goes back to the head for the rest.
    assert await claim(5) == [highest, backlog]
    assert await claim(5) == []


@pytest.mark.parametrize(("woken", "interval"), [(True, 3600.0), (False, 0.05)])
async def test_a_task_of_higher_priority_submitted_mid_drain_does_not_wait_for_the_backlog(
    rig: Rig, store: Store, conn: Any, woken: bool, interval: float
) -> None:
    # Claims resume past their last subtask; a wake-up (each submit sends one through the
    # notifier) or the interval sends the next back to the head, where the new task is.
    rig.configure(full_claim_interval=interval)
    backlog = await submit(store, 5000)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.completer.run)
        tg.start_soon(rig.producer.run)
        await wait_until(lambda: _started(conn, backlog, 500), message="500 started")
        high = await submit(store, 1, priority=9)
        if woken:
            rig.producer.wakeup.set()
        await wait_until(lambda: _started(conn, high, 1), message="the urgent one started")
        rig.producer.stop_claiming()
        await rig.running.wait_empty()
        await rig.completer.flush()
        tg.cancel_scope.cancel()
    # Most of the backlog was still waiting when it started.
    left = await fetch_one(conn, "SELECT count(*) FROM taskd.subtasks"
                                 " WHERE task_id = %s AND status = 'pending'", backlog)
    assert left >= 2500, left


async def _started(conn: Any, task_id: int, n: int) -> bool:
    return int(await fetch_one(conn, "SELECT count(*) FROM taskd.subtasks"
                                     " WHERE task_id = %s AND started_at IS NOT NULL",
                               task_id)) >= n


async def test_handlers_that_finish_at_once_share_a_few_workers_that_end_when_idle(
    rig: Rig, store: Store, conn: Any
) -> None:
    await submit(store, 1000, kind="noop")
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(workers())
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        async with anyio.create_task_group() as inner:
            inner.start_soon(rig.completer.run)
            inner.start_soon(rig.producer.run)
            await wait_until(lambda: all_completed(conn, 1000), message="1,000 noops completed")
            # Idle workers end after idle_worker_seconds (0.3 s) without a subtask.
            await wait_until(lambda: workers() == 0, within=5,
                             message="idle workers ended")
            rig.producer.stop_claiming()
            inner.cancel_scope.cancel()
        tg.cancel_scope.cancel()
    # 1,000 no-ops at a limit of 20 ran on at most a handful of tasks, not one task each.
    assert 1 <= max(seen) <= 3, max(seen)


async def test_stopping_claims_ends_parked_workers_and_the_producer(
    rig: Rig, store: Store, conn: Any
) -> None:
    await submit(store, 10, kind="noop")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.completer.run)
            parked = rig.producer.pool.signals.parked
            parked.arm()
            async with anyio.create_task_group() as producing:
                producing.start_soon(rig.producer.run)
                # A worker parked with nothing left running (within the fail_after above).
                while await parked.wait() < 1 or len(rig.running) > 0:
                    pass
                rig.producer.stop_claiming()
            # The producer's run() returned: its parked workers ended with it.
            assert workers() == 0
            await rig.completer.flush()
            tg.cancel_scope.cancel()
    assert await completed(conn) == 10


async def test_a_claim_woken_by_a_notification_runs_on_the_listening_connection(
    rig: Rig, store: Store, conn: Any, database_url: str
) -> None:
    listen_app = "taskd-listen producer-test"
    notifier = Notifier(database_url, {"standard": rig.producer.wakeup},
                        application_name=listen_app)
    rig.producer.lender = notifier.lender
    rig.configure(poll_interval=3600.0)  # woken only by the notification
    notifier.signals.listening.arm()

    async def last_statement_on_the_listening_connection() -> str:
        return str(await fetch_one(
            conn, "SELECT query FROM pg_stat_activity WHERE application_name = %s", listen_app))

    async with anyio.create_task_group() as tg:
        tg.start_soon(notifier.run)
        await notifier.signals.listening.wait()
        assert "LISTEN" in await last_statement_on_the_listening_connection()
        await rig.producer.wakeup.wait(0)  # the wake-all of a new LISTEN

        waiting = rig.producer.wakeup.signals.waiting
        waiting.arm()

        async def submit_once_idle() -> None:
            await waiting.wait()  # the producer waiting for a wake-up
            await submit(store, 1)  # submit_task notifies the queue

        tg.start_soon(submit_once_idle)
        await run_until(rig, lambda: all_completed(conn, 1), "the subtask completed")
        # The claim (the function taskd.claim_subtasks: its statement's text names it).
        assert "taskd.claim_subtasks(" in await last_statement_on_the_listening_connection()
        tg.cancel_scope.cancel()
