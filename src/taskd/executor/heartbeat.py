"""The heartbeat: keeps the executor's row alive and extends the leases of what it runs.

Every ``interval`` it records the executor's per-queue limits and running counts, extends the
leases of the subtasks still running, stops handlers whose lease was lost or whose task was
cancelled, and pings the systemd watchdog. When heartbeats fail for longer than the lease, the
executor can no longer prove it owns its leases: it stops claiming until a heartbeat succeeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import anyio

from taskd import systemd
from taskd.errors import DatabaseError
from taskd.executor.capacity import Capacity
from taskd.executor.gate import ClaimGate
from taskd.executor.running import RunningSet
from taskd.metrics import Health, Metrics
from taskd.queue.store import Store
from taskd.types import ExecutorInfo

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        store: Store,
        info: ExecutorInfo,
        capacities: Mapping[str, Capacity],
        running: RunningSet,
        gate: ClaimGate,
        metrics: Metrics,
        health: Health,
        *,
        interval: float,
        lease_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.info = info
        self.capacities = capacities
        self.running = running
        self.gate = gate
        self.metrics = metrics
        self.health = health
        self.interval = interval
        self.lease_timeout = lease_timeout
        self.clock = clock
        self.beats = 0  # successful heartbeats, for tests and logs

    async def run(self) -> None:
        last_ok = self.clock()
        watchdog = systemd.watchdog_interval()
        interval = min(self.interval, watchdog) if watchdog else self.interval
        while True:
            await anyio.sleep(interval)
            try:
                await self.beat()
            except DatabaseError as exc:
                failing_for = self.clock() - last_ok
                log.warning("heartbeat failed: %s", exc,
                            extra={"failing_for_s": round(failing_for, 1)})
                if failing_for > self.lease_timeout:
                    self.gate.close(
                        f"heartbeats failing for {failing_for:.0f}s, longer than the lease"
                    )
            else:
                last_ok = self.clock()
                self.gate.open()
            systemd.notify("WATCHDOG=1")

    async def beat(self) -> None:
        """One heartbeat: the executor row, lease extension, cancellations."""
        concurrency = {q: c.limit for q, c in self.capacities.items()}
        running = {q: c.running for q, c in self.capacities.items()}
        status = await self.store.heartbeat_executor(self.info.id, concurrency, running)
        if status is None:  # the row was deleted by hand: register again
            await self.store.register_executor(self.info)
        ids = self.running.ids()
        if ids:
            held = await self.store.extend_leases(self.info.id, ids, self.lease_timeout)
            for subtask_id in ids:
                entry = self.running.get(subtask_id)
                if subtask_id not in held and entry is not None:
                    log.warning("lease lost, stopping the handler",
                                extra={"subtask_id": subtask_id})
                    entry.stop("lease_lost")
            for subtask_id in await self.store.cancel_requested(held):
                entry = self.running.get(subtask_id)
                if entry is not None:
                    log.info("task cancelled, stopping the handler",
                             extra={"subtask_id": subtask_id})
                    entry.stop("cancelled")
        self.beats += 1
        self.health.db_ok()
        self.metrics.executor_last_heartbeat.set(time.time())
        for queue, capacity in self.capacities.items():
            self.metrics.queue_running.labels(queue).set(capacity.running)
