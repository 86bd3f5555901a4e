"""A wake-up signal that is not lost between a claim and the next wait."""

from __future__ import annotations

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
    """Set by the notifier (or anyone); a producer waits on it with its poll interval."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.sets = 0  # how many times it was set: whoever must not miss one compares counts
        self.signals = WakeupSignals()

    def set(self) -> None:
        self.sets += 1
        self._event.set()

    async def wait(self, within: float) -> bool:
        """Wait until set or ``within`` seconds pass (up to 10 % fewer, so that the polls of
        daemons woken together drift apart); return whether it was set. Resets it."""
        self.signals.waiting.signal(None)
        with anyio.move_on_after(within * random.uniform(1 - JITTER, 1)):
            await self._event.wait()
        was_set = self._event.is_set()
        if was_set:
            self._event = anyio.Event()
        return was_set
