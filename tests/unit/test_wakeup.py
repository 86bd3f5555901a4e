"""The wake-up's timed wait: up to a tenth sooner, never later, so that the polls of daemons
woken by the same NOTIFY drift apart."""

from __future__ import annotations

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
