"""The notifier against a real server: wake-ups, and the listening connection lent for a claim."""

from __future__ import annotations

import asyncio
import os
import select
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest

from taskd.executor.notifier import ListenLender, Notifier
from taskd.executor.wakeup import Wakeup
from tests.factories import wait_until

pytestmark = pytest.mark.anyio

APP = "taskd-listen notifier-test"


@dataclass
class Listening:
    notifier: Notifier
    wakeups: dict[str, Wakeup]


@pytest.fixture
async def listening(database_url: str) -> AsyncIterator[Listening]:
    wakeups = {"standard": Wakeup(), "other": Wakeup()}
    notifier = Notifier(database_url, wakeups, application_name=APP)
    notifier.signals.listening.arm()
    async with anyio.create_task_group() as tg:
        tg.start_soon(notifier.run)
        await notifier.signals.listening.wait()
        for wakeup in wakeups.values():  # the wake-all of a new LISTEN
            await wakeup.wait(0)
        yield Listening(notifier, wakeups)
        notifier.lender.give_back()  # should a test fail with it lent: the notifier waits for it
        tg.cancel_scope.cancel()


async def notify(conn: Any, queue: str) -> None:
    await conn.execute("SELECT pg_notify('taskd', %s)", (queue,))


async def application_name(conn: psycopg.AsyncConnection[Any]) -> str:
    cur = await conn.execute(
        "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def lent_after_notify(
    conn: Any, queue: str, wakeup: Wakeup, lender: ListenLender
) -> psycopg.AsyncConnection[Any] | None:
    """What a producer does: wait for its queue's wake-up, then take the connection for its
    claim. Returns what it got once the queue was notified."""
    borrowed: list[psycopg.AsyncConnection[Any] | None] = []

    async def producer() -> None:
        assert await wakeup.wait(10), "not woken"
        borrowed.append(lender.borrow())

    wakeup.signals.waiting.arm()
    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await wakeup.signals.waiting.wait()  # the producer waiting
        await notify(conn, queue)
    return borrowed[0]


async def test_the_connection_that_delivered_a_wake_up_is_lent_to_one_claim(
    listening: Listening, conn: Any
) -> None:
    lender = listening.notifier.lender
    wakeup = listening.wakeups["standard"]
    lent = await lent_after_notify(conn, "standard", wakeup, lender)
    assert lent is not None
    assert lender.borrow() is None  # one claim at a time
    # The listening connection, with the pooled connections' session settings.
    assert await application_name(lent) == APP
    cur = await lent.execute("SHOW TimeZone")
    assert await cur.fetchone() == ("UTC",)
    lender.give_back()
    # Listening again: the next notification wakes its queue.
    await notify(conn, "standard")
    assert await wakeup.wait(10)


async def test_delivering_a_notification_leaves_the_reader_for_the_claim_to_replace(
    listening: Listening, conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing the reader is a system call on the way from the notification to the claim
    (~30-50 us of a process that slept: docs/benchmarks.md); the claim's own reader replaces
    it, and the notifier removes what is left once the connection is back."""
    loop = asyncio.get_running_loop()
    removed: list[int] = []
    remove_reader = loop.remove_reader

    def counted(fd: Any) -> bool:
        removed.append(fd)
        return remove_reader(fd)

    monkeypatch.setattr(loop, "remove_reader", counted)
    lender = listening.notifier.lender
    wakeup = listening.wakeups["standard"]
    lent = await lent_after_notify(conn, "standard", wakeup, lender)
    assert lent is not None
    listening_fd = lent.pgconn.socket
    assert listening_fd not in removed  # not between the notification and the claim
    await lent.execute("SELECT 1")  # the claim: its reader replaced the notifier's
    lender.give_back()
    # Listening again, and the next notification wakes its queue.
    await notify(conn, "standard")
    assert await wakeup.wait(10)
    monkeypatch.undo()


async def test_an_offer_no_producer_takes_is_withdrawn_and_listening_goes_on(
    listening: Listening, conn: Any
) -> None:
    wakeup = listening.wakeups["standard"]
    before = wakeup.sets
    await notify(conn, "standard")
    await wait_until(lambda: wakeup.sets == before + 1, message="woken")
    await anyio.lowlevel.checkpoint()  # the notifier withdraws the offer no one took
    assert listening.notifier.lender.borrow() is None
    await notify(conn, "standard")
    await wait_until(lambda: wakeup.sets == before + 2, message="woken again")


def listening_socket(port: int) -> int:
    """The descriptor of this process's socket whose local port is ``port``."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:
                if sock.family in (socket.AF_INET, socket.AF_INET6) and \
                        sock.getsockname()[1] == port:
                    return fd
        except OSError:  # closed meanwhile
            continue
    raise AssertionError(f"no socket on local port {port}")


async def test_the_producer_takes_the_connection_in_the_loop_turn_after_the_notification(
    listening: Listening, conn: Any, database_url: str
) -> None:
    """The notification is read in the event loop's reader callback, in the turn that finds
    the socket readable; the producer it wakes runs in the next. A task that waited for the
    socket, then read it through psycopg's ``notifies()``, woke the producer three turns
    later, each turn paid before the claim goes out (enqueue-to-start: docs/benchmarks.md)."""
    wakeup, lender = listening.wakeups["standard"], listening.notifier.lender
    cur = await conn.execute(
        "SELECT client_port FROM pg_stat_activity WHERE application_name = %s", (APP,))
    row = await cur.fetchone()
    assert row is not None
    fd = listening_socket(row[0])
    loop = asyncio.get_running_loop()
    turns = 0
    ticking = True

    def tick() -> None:  # runs once each turn of the loop
        nonlocal turns
        turns += 1
        if ticking:
            loop.call_soon(tick)

    borrowed_at: list[int] = []
    claimed: list[float] = []

    async def producer() -> None:
        assert await wakeup.wait(10), "not woken"
        borrowed_at.append(turns)
        lent = lender.borrow()
        assert lent is not None
        # The claim's own wait for the socket is not disturbed by the notifier (psycopg's
        # wait would fall back on its 0.1 s timer).
        started = loop.time()
        await lent.execute("SELECT 1")
        claimed.append(loop.time() - started)
        lender.give_back()

    wakeup.signals.waiting.arm()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await wakeup.signals.waiting.wait()
            # The loop stands still from the NOTIFY until the notification is in the socket.
            with psycopg.connect(database_url, autocommit=True) as notifying:
                notifying.execute("NOTIFY taskd, 'standard'")
            assert select.select([fd], [], [], 10)[0], "the notification never came"
            loop.call_soon(tick)
    ticking = False
    assert borrowed_at == [2], f"the producer took the connection in turn {borrowed_at}"
    assert claimed[0] < 0.1, claimed


@pytest.mark.parametrize("used", [True, False], ids=["used-while-lent", "idle-while-lent"])
async def test_notifications_that_arrive_while_the_connection_is_lent_are_not_lost(
    listening: Listening, conn: Any, used: bool
) -> None:
    lender = listening.notifier.lender
    standard, other = listening.wakeups["standard"], listening.wakeups["other"]
    lent = await lent_after_notify(conn, "standard", standard, lender)
    assert lent is not None
    before = other.sets
    await notify(conn, "other")
    await notify(conn, "other")
    if used:  # a claim on it reads the notifications that came meanwhile
        await lent.execute("SELECT 1")
    with anyio.move_on_after(0.2):
        await other.wait(10)
    assert other.sets == before  # not while lent: the notifier is not listening
    lender.give_back()
    assert await other.wait(10)


@pytest.mark.parametrize("when", ["while lent", "as it is offered"])
async def test_shutdown_waits_for_a_lent_connection_to_come_back(
    database_url: str, conn: Any, when: str
) -> None:
    wakeup = Wakeup()
    notifier = Notifier(database_url, {"standard": wakeup}, application_name=APP)
    notifier.signals.listening.arm()
    lent: list[psycopg.AsyncConnection[Any]] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def producer() -> None:
                assert await wakeup.wait(10)
                borrowed = notifier.lender.borrow()
                assert borrowed is not None
                lent.append(borrowed)
                with anyio.CancelScope(shield=True):  # the claim, which the producer shields
                    if when == "while lent":
                        await anyio.lowlevel.checkpoint()  # the notifier waits for it back
                    # Shutdown (here before the notifier has gone on from its offer, or after).
                    tg.cancel_scope.cancel()
                    await anyio.sleep(0.05)
                    # Still open under the claim: closing it would lose the claim's rows.
                    assert await application_name(borrowed) == APP
                    notifier.lender.give_back()

            tg.start_soon(notifier.run)
            await notifier.signals.listening.wait()
            await wakeup.wait(0)
            wakeup.signals.waiting.arm()
            tg.start_soon(producer)
            await wakeup.signals.waiting.wait()  # the producer waiting
            await notify(conn, "standard")
            await anyio.sleep_forever()  # until the producer's shutdown
    assert lent[0].closed


async def test_waiting_for_a_notification_sets_no_timer(
    listening: Listening, conn: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """psycopg's own wait for notifications woke the event loop on a 0.1 s timer, ten turns a
    second of every idle daemon (docs/scaling.md): the notifier waits for its socket alone."""
    loop = asyncio.get_running_loop()
    timers = 0
    call_later = loop.call_later

    def counted(delay: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return call_later(delay, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_later", counted)
    await anyio.sleep(1.0)  # the idle window in which timers are counted
    monkeypatch.undo()
    # One for the sleep above: with psycopg's wait, ten more.
    assert timers <= 2, timers
    # And it still wakes.
    wakeup = listening.wakeups["standard"]
    await notify(conn, "standard")
    assert await wakeup.wait(10)
