"""A wake-up signal that is not lost between a claim and the next wait."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import anyio

from taskd.testsignals import TestSignal

# A wait that times out ends up to this fraction sooner, never later: a NOTIFY wakes every
# daemon of a fleet at once, and without it their polls would then fire in step for good.
JITTER = 0.1


@dataclass
class WakeupSignals:
    """What tests may wait for: a producer starting to wait for a wake-up."""

    waiting: TestSignal[None] = field(default_factory=TestSignal)


class Wakeup:
    """Set by the notifier (or anyone); a producer waits on it with its poll interval.

    A set is never lost: one that comes while no one waits makes the next :meth:`wait` return
    at once. The way from :meth:`set` to the waiter's return is kept short (no cancel scope
    for a wait without a bound, the next event made before the wait, not after it): it lies
    between a notification and the claim it wakes, in a process that slept until then
    (enqueue-to-start: docs/benchmarks.md).
    """

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.sets = 0  # how many times it was set: whoever must not miss one compares counts
        self._seen = 0  # ``sets`` when the last wait returned
        self.signals = WakeupSignals()

    def set(self) -> None:
        self.sets += 1
        self._event.set()

    async def wait(self, within: float) -> bool:
        """Wait until set or ``within`` seconds pass (up to 10 % fewer, so that the polls of
        daemons woken together drift apart; ``math.inf``: until set); return whether it was
        set since the last wait returned."""
        self.signals.waiting.signal(None)
        if self.sets == self._seen:
            if self._event.is_set():
                self._event = anyio.Event()
            if within == math.inf:
                await self._event.wait()
            else:
                with anyio.move_on_after(within * random.uniform(1 - JITTER, 1)):
                    await self._event.wait()
        was_set = self.sets != self._seen
        self._seen = self.sets
        return was_set
