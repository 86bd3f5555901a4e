"""``taskd run``: wires the components together in one anyio task group.

Start: open the pool and check the schema, load handlers, register the executor, tell systemd
READY. Run: heartbeat, notifier, completer, rescuer, scaler, metrics, and one producer per queue
that this executor's group serves (``Settings.served_queues``; the executor row's
``concurrency`` names them, which is how ``taskd status`` knows who serves what). The group is
read at start: changing it takes a restart.
Any component that crashes stops the daemon with a non-zero exit (systemd restarts it).

Shutdown (SIGTERM or SIGINT): stop claiming; let running handlers finish for ``shutdown_grace``
while the heartbeat keeps extending their leases; cancel what is left and give those subtasks
back as pending (the attempt not spent); flush the completer; mark the executor stopped; exit 0.
A second signal exits at once (leases then expire and the rescuer returns the work).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket

import anyio
import anyio.abc

from taskd import __version__, systemd
from taskd.executor.capacity import Capacity
from taskd.executor.completer import Completer
from taskd.executor.gate import ClaimGate
from taskd.executor.heartbeat import Heartbeat, HeartbeatConfig
from taskd.executor.notifier import Notifier
from taskd.executor.producer import Producer, ProducerConfig
from taskd.executor.rescuer import Rescuer, RescuerConfig
from taskd.executor.runner import Runner
from taskd.executor.running import RunningSet
from taskd.executor.stats import StatsCollector
from taskd.executor.wakeup import Wakeup
from taskd.handlers.clients import http_clients
from taskd.handlers.registry import HandlerRegistry
from taskd.metrics import Health, Metrics
from taskd.metrics.server import MetricsServer
from taskd.queue.database import database_url, redact
from taskd.queue.store import Store
from taskd.scaler.scaler import Scaler
from taskd.settings import Settings, parse_addr
from taskd.types import ExecutorInfo

log = logging.getLogger(__name__)

EXIT_IMMEDIATE = 130

# Python's default first threshold (700 net allocations of container objects) collected
# hundreds of times in a drain, each full collection walking every object imported at startup;
# frozen startup objects and a higher first threshold leave a handful (docs/benchmarks.md).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Collect startup garbage, freeze what is left (modules, classes, settings: they live as
    long as the process) so that no later collection walks it, and make young collections
    rarer. For the ``taskd run`` process only: it changes the collector for the whole
    process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Daemon:
    """One executor: everything ``taskd run`` does, for one process."""

    def __init__(self, settings: Settings, *, own_process: bool = False) -> None:
        """``own_process``: the daemon is the process (``taskd run``), so it may tune the
        garbage collector once started (:func:`tune_gc`)."""
        self.settings = settings
        self.own_process = own_process
        self.metrics = Metrics()
        self.health = Health(ready_window=3 * settings.heartbeat_interval + 5)
        self.running = RunningSet()
        self.gate = ClaimGate()
        # Producers, limits and scaler entries only for what this group serves.
        self.queues = settings.served_queues
        self.capacities = {q: Capacity(s.initial) for q, s in self.queues.items()}
        self.wakeups = {q: Wakeup() for q in self.queues}
        self.stopping = anyio.Event()
        self.producers: list[Producer] = []
        self.runner: Runner | None = None
        self.immediate = False

    async def run(self) -> int:
        """Run until a signal; return the exit code."""
        s = self.settings
        url = database_url(s)
        log.info("starting", extra={"executor_id": s.executor_id, "version": __version__,
                                     "database": redact(url), "group": s.executor_group,
                                     "queues": sorted(self.queues)})
        if not self.queues:
            log.warning("executor group %r serves no queue: this daemon claims nothing (see "
                        "queues.<name>.groups)", s.executor_group)
        registry = HandlerRegistry.load(s)
        # pool_size counts every connection of the daemon: the notifier's LISTEN is one.
        pool_max = s.pool_size - 1 if s.listen else s.pool_size
        store = await Store.open(url, min_size=min(2, pool_max), max_size=pool_max,
                                 application_name=f"taskd {s.executor_id}"[:63])
        try:
            return await self._run(store, url, registry)
        finally:
            with anyio.CancelScope(shield=True):
                await store.close()

    async def _run(self, store: Store, url: str, registry: HandlerRegistry) -> int:
        s = self.settings
        completer = Completer(store, s.executor_id, self.metrics)
        async with http_clients() as http, anyio.create_task_group() as tg:
            tg.start_soon(self._watch_signals, tg.cancel_scope)
            info = await self._register(tg, store)
            notifier = self._start_components(tg, store, url, info, completer)
            self.runner = Runner(
                registry, self.queues, store, completer, self.metrics, http,
                executor_id=s.executor_id,
                thread_limiter=anyio.CapacityLimiter(
                    max(4, sum(c.limit for c in self.capacities.values()))),
            )
            async with anyio.create_task_group() as work:
                for queue in self.queues:
                    producer = Producer(
                        ProducerConfig.from_settings(s, queue), store, s.executor_id,
                        self.capacities[queue], self.wakeups[queue], self.gate, completer,
                        self.running, self.runner, self.metrics,
                        lender=notifier.lender if notifier is not None else None,
                    )
                    self.producers.append(producer)
                    work.start_soon(producer.run)
                if self.own_process:
                    tune_gc()
                systemd.notify("READY=1")
                log.info("ready", extra={"metrics_url": info.metrics_url,
                                         "gc_thresholds": list(gc.get_threshold()),
                                         "gc_frozen_objects": gc.get_freeze_count()})
                await self.stopping.wait()
                await self._drain(store)
            released = await self._finish(store, completer)
            log.info("stopped", extra={"released": released})
            tg.cancel_scope.cancel()
        return EXIT_IMMEDIATE if self.immediate else 0

    async def _register(self, tg: anyio.abc.TaskGroup, store: Store) -> ExecutorInfo:
        """Serve /metrics, then write the executor's row (with the endpoint's address)."""
        s = self.settings
        metrics_server = MetricsServer(s.metrics_addr, self.metrics, self.health)
        tg.start_soon(metrics_server.run)
        with anyio.fail_after(10):
            await metrics_server.started.wait()
        host, _ = parse_addr(s.metrics_addr)
        shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        info = ExecutorInfo(
            id=s.executor_id, executor_group=s.executor_group, hostname=socket.gethostname(),
            pid=os.getpid(), version=__version__,
            concurrency={q: c.limit for q, c in self.capacities.items()},
            metrics_url=f"http://{shown}:{metrics_server.port}/metrics",
        )
        await store.register_executor(info)
        self.health.registered = True
        self.health.db_ok()
        self.metrics.build_info.labels(__version__).set(1)
        for queue, capacity in self.capacities.items():
            self.metrics.queue_concurrency_limit.labels(queue).set(capacity.limit)
        return info

    def _start_components(
        self, tg: anyio.abc.TaskGroup, store: Store, url: str, info: ExecutorInfo,
        completer: Completer,
    ) -> Notifier | None:
        """Start every component but the producers; return the notifier (None without
        ``listen``)."""
        s = self.settings
        tg.start_soon(Heartbeat(
            HeartbeatConfig.from_settings(s), store, info, self.capacities, self.running,
            self.gate, self.metrics, self.health,
        ).run)
        notifier = Notifier(
            url, self.wakeups, application_name=f"taskd-listen {s.executor_id}"[:63],
        ) if s.listen else None
        if notifier is not None:
            tg.start_soon(notifier.run)
        tg.start_soon(completer.run)
        # Maintenance, pending timeouts included, for every queue that runs, whichever group
        # serves it: a queue whose executors are all down still times out.
        tg.start_soon(Rescuer(RescuerConfig.from_settings(s), store, s.active_queues,
                              self.metrics).run)
        tg.start_soon(Scaler(
            store, self.capacities, dict(self.queues), s.scale_check_interval, self.metrics,
            s.executor_id,
        ).run)
        tg.start_soon(StatsCollector(
            store, self.metrics, s.stats_interval, s.pool_size,
            pending_timeouts={q: qs.pending_timeout for q, qs in s.active_queues.items()},
        ).run)
        return notifier

    async def _watch_signals(self, everything: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not self.stopping.is_set():
                    log.info("shutting down", extra={"signal": signal.Signals(signum).name,
                                                     "grace_s": self.settings.shutdown_grace})
                    systemd.notify("STOPPING=1")
                    self.stopping.set()
                else:
                    log.warning("second signal: exiting now")
                    self.immediate = True
                    everything.cancel()

    async def _drain(self, store: Store) -> None:
        """Stop claiming, wait up to the grace period, then stop what is still running."""
        for producer in self.producers:
            producer.stop_claiming()
        try:
            with anyio.CancelScope(shield=True):
                await store.set_executor_status(self.settings.executor_id, "stopping")
        except Exception as exc:  # the database may be down; shutdown goes on
            log.warning("could not mark the executor stopping: %s", exc)
        with anyio.move_on_after(self.settings.shutdown_grace):
            await self.running.wait_empty()
        left = self.running.entries()
        if left:
            log.info("grace period over, giving back running subtasks",
                     extra={"count": len(left)})
        for entry in left:
            entry.stop("shutdown")

    async def _finish(self, store: Store, completer: Completer) -> int:
        """Shielded final writes: outcomes, given-back subtasks, the executor's status.

        Returns how many subtasks were given back (0: everything finished within the grace).
        """
        released = self.runner.released if self.runner is not None else []
        # Shielded from the shutdown, yet bounded: a database that stays down must not hold
        # the process forever (leases then expire and the rescuer returns the work).
        with anyio.move_on_after(max(10.0, self.settings.lease_timeout), shield=True):
            await completer.flush()
            if released:
                await store.release_subtasks(self.settings.executor_id, released)
            await store.set_executor_status(self.settings.executor_id, "stopped")
        return len(released)

