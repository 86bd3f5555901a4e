"""The poller: one statement per ``poll_interval`` for all of an executor's queues.

A producer whose claim came back short waits for a wake-up: a notification (the notifier) or
this poller, which asks once an interval which of the executor's queues a claim would take
something from now (``Store.ready_queues``: ready rows that are not suspects, the queue not
paused, its rate window not used up) and wakes those producers only. Before it, every producer
polled its own queue with a claim: 50 idle queues cost 50 statements an interval
(docs/steady-state.md, "Many queues"). It is the safety net under NOTIFY, and with
``listen = false`` (behind a transaction pooler) the only wake-up: work scheduled ahead, retries
coming due, rescued subtasks and a queue resumed from a pause are all found by it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio

from taskd.errors import ConfigError, DatabaseError
from taskd.executor.wakeup import Wakeup
from taskd.queue.store import DEFAULT_POISON_AFTER, Store
from taskd.settings import Settings
from taskd.testsignals import TestSignal

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PollerConfig:
    """``interval``: seconds from one poll to the next (the longest a ready subtask waits
    without a notification). ``poison_after``: the rescuer's threshold (suspects, which the
    claim skips, do not count as ready). Raises :class:`ConfigError` for an interval <= 0."""

    interval: float
    poison_after: int = DEFAULT_POISON_AFTER

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ConfigError("poller: interval must be > 0 seconds")

    @classmethod
    def from_settings(cls, settings: Settings) -> PollerConfig:
        return cls(settings.poll_interval, settings.poison_after)


@dataclass
class PollerSignals:
    """What tests may wait for: each poll's answer, the queues it found ready."""

    polled: TestSignal[list[str]] = field(default_factory=TestSignal)


class Poller:
    """Every ``interval``, one ``ready_queues`` statement over ``wakeups``' queues; sets the
    wake-up of each queue it finds ready."""

    def __init__(self, config: PollerConfig, store: Store, wakeups: Mapping[str, Wakeup]) -> None:
        self.config = config
        self.store = store
        self.wakeups = wakeups
        self.queues = sorted(wakeups)
        self.signals = PollerSignals()

    async def run(self) -> None:
        if not self.queues:
            return
        # On a fixed beat, not an interval after each answer: a slow poll does not stretch
        # the wait of the next.
        next_at = anyio.current_time() + self.config.interval
        while True:
            await anyio.sleep_until(next_at)
            next_at = max(next_at + self.config.interval, anyio.current_time())
            await self.poll_once()

    async def poll_once(self) -> list[str]:
        """Ask once and wake the producers of the queues found ready; return those queues
        (none after a database error, which is logged: the next poll tries again)."""
        try:
            ready = await self.store.ready_queues(self.queues,
                                                  poison_after=self.config.poison_after)
        except DatabaseError as exc:
            log.warning("poll failed: %s", exc)
            ready = []
        for queue in ready:
            self.wakeups[queue].set()
        self.signals.polled.signal(ready)
        return ready
