"""A wake-up signal that is not lost between a claim and the next wait."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from taskd.testsignals import TestSignal


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
        """Wait until set or ``within`` seconds pass; return whether it was set. Resets it."""
        self.signals.waiting.signal(None)
        with anyio.move_on_after(within):
            await self._event.wait()
        was_set = self._event.is_set()
        if was_set:
            self._event = anyio.Event()
        return was_set
