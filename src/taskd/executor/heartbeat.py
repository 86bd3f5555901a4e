"""The heartbeat: keeps the executor's row alive and extends the leases of what it runs.

Every ``interval`` (up to 10 % sooner, so that daemons started together do not beat in step)
it records the executor's per-queue limits and running counts, extends the leases of the
subtasks still running, stops handlers whose lease was lost or whose task was cancelled, and
pings the systemd watchdog. When heartbeats fail for longer than the lease, the
executor can no longer prove it owns its leases: it stops claiming until a heartbeat succeeds.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio

from taskd import systemd
from taskd.errors import ConfigError, DatabaseError
from taskd.executor.capacity import Capacity
from taskd.executor.gate import ClaimGate
from taskd.executor.running import RunningSet
from taskd.metrics import Health, Metrics
from taskd.queue.store import Store
from taskd.settings import Settings
from taskd.testsignals import TestSignal
from taskd.types import ExecutorInfo

log = logging.getLogger(__name__)

# Each wait is up to this fraction shorter than the interval, never longer (the lease and the
# systemd watchdog count on the interval): daemons started together drift out of step.
JITTER = 0.1


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    """``interval``: seconds between heartbeats; ``lease_timeout``: what each extends a lease
    to. Raises :class:`ConfigError` unless ``0 < interval < lease_timeout``."""

    interval: float
    lease_timeout: float

    def __post_init__(self) -> None:
        if not 0 < self.interval < self.lease_timeout:
            raise ConfigError(
                f"heartbeat: interval ({self.interval:g}) must be > 0 and shorter than "
                f"lease_timeout ({self.lease_timeout:g})"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> HeartbeatConfig:
        return cls(settings.heartbeat_interval, settings.lease_timeout)


@dataclass
class HeartbeatSignals:
    """What tests may wait for: a heartbeat written."""

    beat: TestSignal[None] = field(default_factory=TestSignal)


class Heartbeat:
    def __init__(
        self,
        config: HeartbeatConfig,
        store: Store,
        info: ExecutorInfo,
        capacities: Mapping[str, Capacity],
        running: RunningSet,
        gate: ClaimGate,
        metrics: Metrics,
        health: Health,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.info = info
        self.capacities = capacities
        self.running = running
        self.gate = gate
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self.signals = HeartbeatSignals()

    async def run(self) -> None:
        last_ok = self.clock()
        watchdog = systemd.watchdog_interval()
        interval = self.config.interval
        if watchdog:
            interval = min(interval, watchdog)
        while True:
            await anyio.sleep(interval * random.uniform(1 - JITTER, 1))
            try:
                await self.beat()
            except DatabaseError as exc:
                failing_for = self.clock() - last_ok
                log.warning("heartbeat failed: %s", exc,
                            extra={"failing_for_s": round(failing_for, 1)})
                if failing_for > self.config.lease_timeout:
                    self.gate.close(
                        f"heartbeats failing for {failing_for:.0f}s, longer than the lease",
                        by="heartbeat",
                    )
            else:
                last_ok = self.clock()
                self.gate.open(by="heartbeat")
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
            held = await self.store.extend_leases(self.info.id, ids,
                                                 self.config.lease_timeout)
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
        self.signals.beat.signal(None)
        self.health.db_ok()
        self.metrics.executor_last_heartbeat.set(time.time())
        for queue, capacity in self.capacities.items():
            self.metrics.queue_running.labels(queue).set(capacity.running)
