"""The scaler: moves each queue's concurrency limit with the queue's ready backlog.

The rule, :func:`decide`, is a pure function of the backlog, the limit and the clock: up by
``step`` (to at most ``max``) when ``backlog > 2 * limit`` and the last scale-up is older than
``scale_up_interval``; down by ``step`` (to at least ``initial``) when ``backlog < limit / 2``
and the last scale-down is older than ``scale_down_interval``. A limit found outside
``initial..max`` is brought back inside at once, without waiting for an interval.

Every ``interval`` (jittered) it reads every queue's ready backlog in one query, applies
:func:`decide` to each queue's limit, logs each change with its
reason, counts it in ``taskd_scaler_adjustments_total``, exposes the limit as
``taskd_queue_concurrency_limit`` and writes the executor's limits to its row (``taskd status``).
Lowering a limit never cancels a running handler: the producer only claims less until the running
count falls under the new limit. A database error is logged and the next check carries on.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import anyio

from taskd.errors import DatabaseError, InvalidInput
from taskd.metrics import Metrics
from taskd.queue import scaling
from taskd.queue.store import Store
from taskd.settings import QueueSettings
from taskd.testsignals import TestSignal

log = logging.getLogger(__name__)

# Executors started together would otherwise check, and query, in step.
JITTER = 0.1


class Limit(Protocol):
    """A queue's concurrency limit that the scaler moves (the executor's ``Capacity``)."""

    @property
    def limit(self) -> int: ...

    @property
    def running(self) -> int: ...

    def set_limit(self, limit: int) -> None: ...


Direction = Literal["up", "down"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The limit to run at, which way it moved (None: unchanged), and why, for the log."""

    limit: int
    direction: Direction | None
    reason: str


def _cooling(last: float | None, now: float, interval: float) -> float | None:
    """Seconds since ``last`` when that is under ``interval``; None when the interval passed."""
    if last is None:
        return None
    elapsed = now - last
    return elapsed if elapsed < interval else None


def decide(
    backlog: int,
    limit: int,
    last_scale_up: float | None,
    last_scale_down: float | None,
    now: float,
    settings: QueueSettings,
) -> Decision:
    """Decide one queue's next concurrency limit.

    ``backlog`` is the queue's ready pending subtasks, ``limit`` its current limit;
    ``last_scale_up``/``last_scale_down`` are clock readings of the last change each way (None:
    never) and ``now`` a reading of the same clock. Pure: no I/O, no clock of its own.
    Raises ``ValueError`` for a negative backlog or a limit below 1.
    """
    if backlog < 0:
        raise ValueError(f"backlog must be >= 0, got {backlog}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    low, high, step = settings.initial, settings.max, settings.step

    # Outside the bounds (settings changed under a running limit): back inside at once.
    if limit > high:
        return Decision(high, "down", f"limit {limit} is above max {high}")
    if limit < low:
        return Decision(low, "up", f"limit {limit} is below initial {low}")

    if backlog > 2 * limit:
        if limit >= high:
            return Decision(limit, None, f"backlog {backlog} > 2 * {limit}, already at max {high}")
        elapsed = _cooling(last_scale_up, now, settings.scale_up_interval)
        if elapsed is not None:
            return Decision(
                limit, None,
                f"backlog {backlog} > 2 * {limit}, but the last scale-up was {elapsed:.1f}s ago"
                f" (scale_up_interval {settings.scale_up_interval:g}s)",
            )
        new = min(limit + step, high)
        return Decision(new, "up", f"backlog {backlog} > 2 * {limit}: {limit} -> {new}")

    # backlog < limit / 2, in integers so that odd limits are exact.
    if 2 * backlog < limit:
        if limit <= low:
            return Decision(
                limit, None, f"backlog {backlog} < {limit} / 2, already at initial {low}"
            )
        elapsed = _cooling(last_scale_down, now, settings.scale_down_interval)
        if elapsed is not None:
            return Decision(
                limit, None,
                f"backlog {backlog} < {limit} / 2, but the last scale-down was {elapsed:.1f}s"
                f" ago (scale_down_interval {settings.scale_down_interval:g}s)",
            )
        new = max(limit - step, low)
        return Decision(new, "down", f"backlog {backlog} < {limit} / 2: {limit} -> {new}")

    return Decision(
        limit, None, f"backlog {backlog} within {limit} / 2 .. 2 * {limit}: limit stays"
    )


@dataclass
class ScalerSignals:
    """What tests may wait for: a check done (its decisions), a check a database error ended."""

    checked: TestSignal[dict[str, Decision]] = field(default_factory=TestSignal)
    failed: TestSignal[DatabaseError] = field(default_factory=TestSignal)


class Scaler:
    """One per executor, for all of its queues."""

    def __init__(
        self,
        store: Store,
        capacities: Mapping[str, Limit],
        queues: dict[str, QueueSettings],
        interval: float,
        metrics: Metrics,
        executor_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises :class:`InvalidInput` when ``interval`` is not positive or a queue with a
        capacity has no settings."""
        if interval <= 0:
            raise InvalidInput(f"interval must be > 0 seconds, got {interval}", field="interval")
        missing = sorted(set(capacities) - set(queues))
        if missing:
            raise InvalidInput(f"queue {missing[0]!r} has a capacity but no settings",
                               field="queues")
        self.store = store
        self.capacities = capacities
        self.queues = queues
        self.interval = interval
        self.metrics = metrics
        self.executor_id = executor_id
        self.clock = clock
        self.last_scale_up: dict[str, float] = {}
        self.last_scale_down: dict[str, float] = {}
        self.signals = ScalerSignals()
        self._row_outdated = False  # a change whose write to the executor row failed

    async def run(self) -> None:
        """Check at once, then every ``interval`` (±10 %), until cancelled."""
        for queue, capacity in self.capacities.items():
            self.metrics.queue_concurrency_limit.labels(queue).set(capacity.limit)
        while True:
            try:
                await self.check_once()
            except DatabaseError as exc:
                self.signals.failed.signal(exc)
                log.warning("scaler check failed, trying again next interval: %s", exc)
            await anyio.sleep(self.interval * random.uniform(1 - JITTER, 1 + JITTER))

    async def check_once(self) -> dict[str, Decision]:
        """One check of every queue; return each queue's decision.

        Raises :class:`taskd.errors.DatabaseError` when the backlog cannot be read (no limit
        moves then) or the executor row cannot be written (the limits have moved; the write is
        tried again at the next check).
        """
        caps = {q: 2 * self.queues[q].max + 1 for q in self.capacities}
        backlogs = await scaling.ready_backlog(self.store, caps)
        now = self.clock()
        decisions: dict[str, Decision] = {}
        for queue, capacity in self.capacities.items():
            backlog = backlogs.get(queue, 0)
            decision = decide(backlog, capacity.limit, self.last_scale_up.get(queue),
                              self.last_scale_down.get(queue), now, self.queues[queue])
            decisions[queue] = decision
            if decision.direction is not None:
                before = capacity.limit
                capacity.set_limit(decision.limit)
                if decision.direction == "up":
                    self.last_scale_up[queue] = now
                else:
                    self.last_scale_down[queue] = now
                self.metrics.scaler_adjustments.labels(queue, decision.direction).inc()
                self._row_outdated = True
                # Counting stops at the cap; say so rather than show the cap as the backlog.
                counted = (f" (backlog counted up to {caps[queue]})"
                           if backlog >= caps[queue] else "")
                log.info("queue %s scaled %s to %d: %s%s", queue, decision.direction,
                         decision.limit, decision.reason, counted,
                         extra={"queue": queue, "direction": decision.direction,
                                "limit_before": before, "limit": decision.limit,
                                "backlog": backlog, "running": capacity.running})
            self.metrics.queue_concurrency_limit.labels(queue).set(capacity.limit)
        if self._row_outdated:
            limits = {q: c.limit for q, c in self.capacities.items()}
            if not await scaling.record_concurrency(self.store, self.executor_id, limits):
                log.warning("executor row %s not found; the heartbeat registers it again",
                            self.executor_id)
            self._row_outdated = False
        self.signals.checked.signal(decisions)
        return decisions
