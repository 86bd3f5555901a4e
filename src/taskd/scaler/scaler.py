"""The scaler: moves each queue's concurrency limit with the queue's ready backlog.

Every ``interval`` (jittered) it reads every queue's ready backlog in one query, applies
:func:`taskd.scaler.decision.decide` to each queue's :class:`Capacity`, logs each change with its
reason, counts it in ``taskd_scaler_adjustments_total``, exposes the limit as
``taskd_queue_concurrency_limit`` and writes the executor's limits to its row (``taskd status``).
Lowering a limit never cancels a running handler: the producer only claims less until the running
count falls under the new limit. A database error is logged and the next check carries on.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import anyio

from taskd.errors import DatabaseError, InvalidInput
from taskd.metrics import Metrics
from taskd.queue import scaling
from taskd.queue.capacity import Capacity
from taskd.queue.store import Store
from taskd.scaler.decision import Decision, decide
from taskd.settings import QueueSettings

log = logging.getLogger(__name__)

# Executors started together would otherwise check, and query, in step.
JITTER = 0.1


class Scaler:
    """One per executor, for all of its queues."""

    def __init__(
        self,
        store: Store,
        capacities: dict[str, Capacity],
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
        self.checks = 0  # checks that completed, row write included (tests wait on it)
        self.failures = 0  # checks that a database error ended
        self._row_outdated = False  # a change whose write to the executor row failed

    async def run(self) -> None:
        """Check at once, then every ``interval`` (±10 %), until cancelled."""
        for queue, capacity in self.capacities.items():
            self.metrics.queue_concurrency_limit.labels(queue).set(capacity.limit)
        while True:
            try:
                await self.check_once()
            except DatabaseError as exc:
                self.failures += 1
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
        self.checks += 1
        return decisions
