"""The poller: one statement per ``poll_interval`` for all of an executor's periodic looks.

A producer whose claim came back short waits for a wake-up: a notification (the notifier) or
this poller, which asks once an interval which of the executor's queues a claim would take
something from now (``Store.poll``: ready rows that are not suspects, the queue not paused,
its rate window not used up) and wakes those producers only. Before it, every producer polled
its own queue with a claim: 50 idle queues cost 50 statements an interval
(docs/steady-state.md, "Many queues"). It is the safety net under NOTIFY, and with
``listen = false`` (behind a transaction pooler) the only wake-up: work scheduled ahead,
retries coming due, rescued subtasks and a queue resumed from a pause are all found by it.

The same statement answers the quarantine (is a suspect of these queues ready?) and, when the
daemon gives it the dispatcher's wake-up, the notification dispatcher (is a notification
due?): each of them asked with a statement of its own every second before, and an idle daemon
made three statements a second where it now makes one (docs/scaling.md).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio

from taskd.errors import ConfigError, DatabaseError
from taskd.executor.wakeup import JITTER, Wakeup
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
    """Every ``interval``, one ``poll`` statement over ``wakeups``' queues; sets the wake-up of
    each queue it finds ready, ``quarantine`` when a suspect of them is ready and
    ``dispatcher`` when a notification is due (each looked for only when given)."""

    def __init__(
        self, config: PollerConfig, store: Store, wakeups: Mapping[str, Wakeup], *,
        quarantine: Wakeup | None = None, dispatcher: Wakeup | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.wakeups = wakeups
        self.queues = sorted(wakeups)
        self.quarantine = quarantine if self.queues else None
        self.dispatcher = dispatcher
        self.signals = PollerSignals()

    async def run(self) -> None:
        if not self.queues and self.dispatcher is None:
            return
        # On a beat, not an interval after each answer: a slow poll does not stretch the wait
        # of the next. Each beat up to JITTER shorter than the interval, never longer (a new
        # subtask starts within it): daemons started together drift apart instead of polling
        # in step for good (docs/scaling.md, "Bursts").
        interval = self.config.interval
        next_at = anyio.current_time() + interval * random.uniform(1 - JITTER, 1)
        while True:
            await anyio.sleep_until(next_at)
            next_at = max(next_at + interval * random.uniform(1 - JITTER, 1),
                          anyio.current_time())
            await self.poll_once()

    async def poll_once(self) -> list[str]:
        """Ask once and wake the producers of the queues found ready (and the quarantine, the
        dispatcher); return those queues (none after a database error, which is logged: the
        next poll tries again)."""
        try:
            answer = await self.store.poll(
                self.queues, poison_after=self.config.poison_after,
                suspects=self.quarantine is not None, notifications=self.dispatcher is not None)
        except DatabaseError as exc:
            log.warning("poll failed: %s", exc)
            ready: list[str] = []
        else:
            ready = answer.ready
            if answer.suspects and self.quarantine is not None:
                self.quarantine.set()
            if answer.notifications and self.dispatcher is not None:
                self.dispatcher.set()
        for queue in ready:
            self.wakeups[queue].set()
        self.signals.polled.signal(ready)
        return ready
