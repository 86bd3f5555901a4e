"""The poller: one statement an interval for all of a daemon's queues, and the wake-ups it
gives; with LISTEN off, the only way a producer learns of new work."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

import anyio
import pytest

from taskd.executor.daemon import Daemon
from taskd.executor.poller import Poller, PollerConfig
from taskd.executor.wakeup import Wakeup
from taskd.queue import maintenance
from taskd.queue.controls import pause_queue, register_queues, resume_queue
from taskd.queue.store import Poll, Store
from taskd.settings import QueueSettings, RateLimit, Settings
from tests.factories import fetch_one, insert_subtasks, submit, wait_until

pytestmark = pytest.mark.anyio

QUEUES = [f"q{i:02d}" for i in range(1, 51)]
POLL = 0.2
# What a subtask may wait beyond the poll interval on a machine shared with other test runs:
# the poll's and the claim's round trips and the event loop's turn.
SLACK = 0.4


async def test_one_poll_finds_exactly_the_queues_a_claim_would_take_from(
    store: Store, conn: Any,
) -> None:
    for queue in ("ready", "paused", "spent"):
        await submit(store, 2, queue=queue)
    await submit(store, queue="later", delay=60)
    # A suspected poison pill is the quarantine's, not the claim's.
    await insert_subtasks(conn, queue="suspect", crashes=2)
    await register_queues(store, {"paused": None, "spent": RateLimit(1, 60)})
    await pause_queue(store, "paused")
    [taken] = await store.claim_subtasks("spent", "x", 10, 60, rate_limit=RateLimit(1, 60))
    wakeups = {q: Wakeup() for q in ("ready", "paused", "later", "suspect", "spent", "empty")}
    poller = Poller(PollerConfig(interval=POLL), store, wakeups)
    store.signals.statements.arm()

    assert await poller.poll_once() == ["ready"]
    assert store.signals.statements.taken() == ["poll"]  # one statement for six
    assert {q: w.sets for q, w in wakeups.items()} == {
        "ready": 1, "paused": 0, "later": 0, "suspect": 0, "spent": 0, "empty": 0}

    # Each becomes ready when a claim would take it: at run_after, resumed, next window.
    queues = sorted(wakeups)
    run_after = await fetch_one(conn, "SELECT run_after FROM taskd.subtasks"
                                      " WHERE queue = 'later'")
    tick = timedelta(milliseconds=1)
    assert "later" not in (await store.poll(queues, now=run_after - tick)).ready
    assert "later" in (await store.poll(queues, now=run_after)).ready
    # The window slides: room again a period after the one claim it holds.
    window_end = await fetch_one(conn, "SELECT rate_claimed_at[1] + interval '60 s'"
                                       " FROM taskd.queue_controls WHERE queue = 'spent'")
    assert "spent" not in (await store.poll(queues, now=window_end - tick)).ready
    assert "spent" in (await store.poll(queues, now=window_end)).ready
    assert taken.queue == "spent"
    await resume_queue(store, "paused")
    assert await poller.poll_once() == ["paused", "ready"]


def daemon_settings(database_url: str, **changes: Any) -> Settings:
    queues = {q: QueueSettings(initial=2, max=2) for q in QUEUES}
    return Settings(**{
        "database_url": database_url, "metrics_addr": "127.0.0.1:0", "executor_id": "poller",
        "handlers": {}, "poll_interval": POLL, "shutdown_grace": 5, "listen": False,
        "rescue_interval": 2 * POLL,
        "queues": {**queues, "standard": QueueSettings(enabled=False),
                   "lumina": QueueSettings(enabled=False)},
        **changes,
    })


@pytest.fixture
async def idle_daemon(database_url: str) -> AsyncIterator[Daemon]:
    """A daemon serving 50 empty queues with LISTEN off, once every producer waits."""
    daemon = Daemon(daemon_settings(database_url))
    for wakeup in daemon.wakeups.values():
        wakeup.signals.waiting.arm()
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        for wakeup in daemon.wakeups.values():
            await wakeup.signals.waiting.wait(within=30)
        await wait_until(lambda: daemon.poller is not None, message="the poller started")
        yield daemon
        daemon.stopping.set()


async def test_fifty_idle_queues_cost_one_poll_statement_an_interval(
    idle_daemon: Daemon,
) -> None:
    store = idle_daemon._store
    assert store is not None
    store.signals.statements.arm()
    intervals = 10
    await anyio.sleep(intervals * POLL)  # the window statements are counted over
    made = Counter(store.signals.statements.taken())
    # Before the poller, each producer claimed every poll interval: 50 claims an interval.
    assert made["claim_subtasks"] + made["claim_subtasks_plain"] == 0, made
    assert intervals - 2 <= made["poll"] <= intervals + 1, made
    # Nothing runs once per queue: the rescuer's pending-timeout pass (every 2 intervals here)
    # looks at all 50 in one statement too, where it ran one per queue.
    assert made["queues_with_old_unstarted_tasks"] >= 2, made
    assert made["fail_unstarted_tasks"] == 0, made
    assert max(made.values()) <= intervals + 1, made


async def test_an_idle_daemons_looks_for_work_suspects_and_notifications_are_one_statement(
    idle_daemon: Daemon, conn: Any,
) -> None:
    """The quarantine and the notification dispatcher made a statement of their own every
    interval each; the poll asks for them, and each acts only when it finds something."""
    store = idle_daemon._store
    assert store is not None and idle_daemon.poller is not None
    assert idle_daemon.settings.notifications.enabled
    store.signals.statements.arm()
    intervals = 10
    await anyio.sleep(intervals * POLL)  # the window statements are counted over
    made = Counter(store.signals.statements.taken())
    assert intervals - 2 <= made["poll"] <= intervals + 1, made
    assert made["suspects_waiting"] == made["claim_suspect"] == 0, made
    assert made["claim_notifications"] == 0, made

    # A suspect that the poll finds is run alone by the quarantine.
    await insert_subtasks(conn, queue="q07", crashes=2)
    await wait_until(
        lambda: fetch_one(conn, "SELECT status = 'completed' FROM taskd.subtasks"
                                " WHERE queue = 'q07'"),
        within=10, message="the suspect ran")
    made = Counter(store.signals.statements.taken())
    assert made["claim_suspect"] == 1, made


class _NothingReady:
    """A store whose every poll finds nothing (the poller's beat is what is looked at)."""

    async def poll(self, queues: Any, **options: Any) -> Poll:
        return Poll([], False, False)


async def test_the_poll_beat_is_up_to_a_tenth_shorter_never_longer() -> None:
    """Daemons started together polled in step for good on a fixed beat (docs/scaling.md,
    "Bursts"): each beat is now up to 10 % shorter than the interval, so they drift apart."""
    interval, beats = 0.1, 30
    poller = Poller(PollerConfig(interval=interval), cast(Store, _NothingReady()),
                    {"q": Wakeup()})
    polled = poller.signals.polled
    polled.arm()
    times = []
    async with anyio.create_task_group() as tg:
        start = anyio.current_time()
        tg.start_soon(poller.run)
        for _ in range(beats):
            await polled.wait(within=5)
            times.append(anyio.current_time())
        tg.cancel_scope.cancel()
    gaps = [b - a for a, b in zip([start, *times], times, strict=False)]
    # Never longer (a slow turn of a loaded machine aside); shorter on the whole: a fixed beat
    # polls the 30th time at 30 intervals or later, the jittered one at 28.5 on average.
    assert max(gaps) <= interval + 0.05, gaps
    assert times[-1] - start < beats * interval - 0.05, times[-1] - start


async def started_after(conn: Any, task_id: int) -> float | None:
    """Seconds from the subtask's run_after to its start; None until it started."""
    return await fetch_one(  # type: ignore[no-any-return]
        conn, "SELECT max(date_part('epoch', started_at - run_after)) FROM taskd.subtasks"
              " WHERE task_id = %s", task_id)


async def wait_started(conn: Any, task_id: int) -> float:
    await wait_until(lambda: started_after(conn, task_id), within=10,
                     message=f"task {task_id} started")
    waited = await started_after(conn, task_id)
    assert waited is not None
    return waited


async def test_with_listen_off_work_in_any_of_fifty_queues_starts_within_the_poll_interval(
    idle_daemon: Daemon, store: Store, conn: Any,
) -> None:
    for queue in ("q01", "q23", "q50", "q37"):
        task = await submit(store, queue=queue)
        waited = await wait_started(conn, task)
        assert 0 <= waited <= POLL + SLACK, (queue, waited)

    # Scheduled ahead: not before its run_after, and within the interval after it.
    task = await submit(store, queue="q11", delay=3 * POLL)
    assert 0 <= await wait_started(conn, task) <= POLL + SLACK


async def test_a_paused_queue_is_not_claimed_until_resumed(
    idle_daemon: Daemon, store: Store, conn: Any,
) -> None:
    assert idle_daemon.poller is not None
    polled = idle_daemon.poller.signals.polled
    polled.arm()
    await pause_queue(store, "q05")
    task = await submit(store, queue="q05")
    for _ in range(3):  # three polls after the submission: none finds it
        assert "q05" not in await polled.wait(within=5)
    assert await started_after(conn, task) is None
    await resume_queue(store, "q05")  # its NOTIFY finds no listener: the poll wakes it
    assert await wait_started(conn, task) >= 2 * POLL  # the three polls span two intervals


async def test_the_rescuers_one_look_finds_only_queues_with_old_unstarted_tasks(
    store: Store, conn: Any,
) -> None:
    for queue in ("old", "started", "young"):
        await submit(store, 2, queue=queue)
    await store.claim_subtasks("started", "x", 1, 60)  # a task with a start never times out
    await conn.execute("UPDATE taskd.tasks SET created_at = now() - interval '1 hour'"
                       " WHERE queue <> 'young'")
    timeouts = {"old": 60.0, "started": 60.0, "young": 60.0, "empty": 60.0}
    assert await maintenance.queues_with_old_unstarted_tasks(store, timeouts) == ["old"]
    later = await store.database_now() + timedelta(seconds=61)
    assert sorted(await maintenance.queues_with_old_unstarted_tasks(
        store, timeouts, now=later)) == ["old", "young"]
