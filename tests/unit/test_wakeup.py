"""The wake-up's timed wait: up to a tenth sooner, never later, so that the polls of daemons
woken by the same NOTIFY drift apart."""

from __future__ import annotations

import math

import anyio
import pytest

from taskd.executor.wakeup import Wakeup

pytestmark = pytest.mark.anyio


async def test_a_timed_out_wait_ends_up_to_a_tenth_sooner() -> None:
    wakeup = Wakeup()
    waits = []
    for _ in range(12):
        start = anyio.current_time()
        assert not await wakeup.wait(0.05)
        waits.append(anyio.current_time() - start)
    # A timeout never fires early: without jitter every wait lasts at least 0.05 s. With it,
    # each falls below 0.0485 with probability 0.7: all twelve missing it, 0.3 ** 12.
    assert min(waits) < 0.0485, waits
    assert min(waits) >= 0.045 - 0.001, waits


async def test_a_set_wakeup_ends_the_wait_at_once() -> None:
    wakeup = Wakeup()
    wakeup.set()
    with anyio.fail_after(1):
        assert await wakeup.wait(30)


async def test_a_set_while_no_one_waits_ends_only_the_next_wait() -> None:
    wakeup = Wakeup()
    wakeup.set()
    wakeup.set()
    with anyio.fail_after(1):
        assert await wakeup.wait(30)
    assert not await wakeup.wait(0.01)  # two sets, one wake-up: both were seen


async def test_a_wait_without_a_bound_ends_when_another_task_sets_it() -> None:
    wakeup = Wakeup()
    woke = []

    async def waiter() -> None:
        woke.append(await wakeup.wait(math.inf))

    wakeup.signals.waiting.arm()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wakeup.signals.waiting.wait()
            wakeup.set()
    assert woke == [True]


async def test_a_set_between_two_waits_ends_the_second_at_once() -> None:
    wakeup = Wakeup()
    for _ in range(3):  # each round: a set after the last wait returned is not lost
        wakeup.set()
        with anyio.fail_after(1):
            assert await wakeup.wait(math.inf)
