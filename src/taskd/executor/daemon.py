"""``taskd run``: wires the components together in one anyio task group.

Start: open the pool and check the schema, load handlers, register the executor, tell systemd
READY. Run: heartbeat, notifier, poller, claimer, completer, rescuer, scaler, schedule ticker,
metrics, and one producer per queue that this executor's group serves
(``Settings.served_queues``; the executor row's ``concurrency`` names them, which is how
``taskd status`` knows who serves what). The group is read at start: changing it takes a
restart.
Any component that crashes stops the daemon with a non-zero exit (systemd restarts it).

Start: a database that is unavailable (refused, out of connection slots, starting up) is tried
again with backoff until it answers; one that refuses the configuration (credentials, no such
database) or an unmigrated schema stops the start with one line.

Shutdown (SIGTERM or SIGINT): stop claiming; let running handlers finish for ``shutdown_grace``
while the heartbeat keeps extending their leases; cancel what is left and give those subtasks
back as pending (the attempt not spent); flush the completer; mark the executor stopped; exit 0.
The final writes get ``final_writes_timeout``: a database that stays down is given up on then
(leases expire and the rescuer returns the work). The whole stop takes at most
``shutdown_grace + final_writes_timeout + STOP_MARGIN``, which the unit's ``TimeoutStopSec``
covers. A second signal exits at once, within ``IMMEDIATE_EXIT_WITHIN``.

Just over 400 lines: the start, the wiring and the stop sequence read best side by side.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress

import anyio
import anyio.abc

from taskd import __version__, systemd
from taskd.errors import ConfigError, DatabaseError
from taskd.executor.capacity import Capacity
from taskd.executor.claimer import Claimer, ClaimerConfig
from taskd.executor.completer import Completer
from taskd.executor.dispatcher import Dispatcher, DispatcherConfig
from taskd.executor.gate import ClaimGate
from taskd.executor.heartbeat import Heartbeat, HeartbeatConfig
from taskd.executor.notifier import Notifier
from taskd.executor.poller import Poller, PollerConfig
from taskd.executor.producer import Producer, ProducerConfig
from taskd.executor.quarantine import Quarantine, QuarantineConfig
from taskd.executor.rescuer import Rescuer, RescuerConfig
from taskd.executor.runner import Runner
from taskd.executor.running import RunningSet
from taskd.executor.stats import StatsCollector
from taskd.executor.ticker import Ticker, TickerConfig
from taskd.executor.tracing import Tracing
from taskd.executor.wakeup import Wakeup
from taskd.handlers.clients import http_clients
from taskd.handlers.registry import HandlerRegistry
from taskd.metrics import Health, Metrics
from taskd.metrics.server import MetricsServer
from taskd.queue.controls import register_queues
from taskd.queue.database import database_url, redact
from taskd.queue.store import Store, when_available
from taskd.retries import retry_after_failure
from taskd.scaler.scaler import Scaler
from taskd.settings import Settings, parse_addr
from taskd.types import ExecutorInfo

log = logging.getLogger(__name__)

EXIT_IMMEDIATE = 130
EXIT_STOP_OVERRUN = 1

# Seconds a stop may take beyond shutdown_grace + final_writes_timeout (closing the pool and the
# event loop), after which the process exits anyway: TimeoutStopSec in deploy/systemd must cover
# all three, so that systemd never has to SIGKILL (tests/system/test_systemd_units.py checks it).
STOP_MARGIN = 5.0
# After a second signal the process is gone within this many seconds, whatever still runs (a
# shielded claim waiting for a connection, a handler in a thread, the pool's workers).
IMMEDIATE_EXIT_WITHIN = 0.5
# Closing the pool at exit: its workers may be stuck connecting to a database that is down.
POOL_CLOSE_TIMEOUT = 1.0
# Start: a database that is unavailable is tried again after 0.5 s, 1 s, 2 s ... at most 5 s.
START_RETRY_BASE = 0.5
START_RETRY_MAX = 5.0
START_CONNECT_TIMEOUT = 10.0

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

    def __init__(
        self, settings: Settings, *, own_process: bool = False, tracing: Tracing | None = None,
    ) -> None:
        """``own_process``: the daemon is the process (``taskd run``), so it may tune the
        garbage collector once started (:func:`tune_gc`). ``tracing``: OpenTelemetry spans
        (:func:`taskd.executor.tracing.load_tracing`); None traces nothing."""
        self.settings = settings
        self.tracing = tracing
        self.own_process = own_process
        self.metrics = Metrics()
        self.health = Health(ready_window=3 * settings.heartbeat_interval + 5)
        self.running = RunningSet()
        self.gate = ClaimGate()
        # Producers, limits and scaler entries only for what this group serves.
        self.queues = settings.served_queues
        self.capacities = {q: Capacity(s.initial) for q, s in self.queues.items()}
        self.wakeups = {q: Wakeup() for q in self.queues}
        # Set by the poller: a suspect may be ready; a notification may be due.
        self.quarantine_wakeup = Wakeup()
        self.dispatcher_wakeup = Wakeup()
        self.stopping = anyio.Event()
        self.producers: list[Producer] = []
        self.runner: Runner | None = None
        self.quarantine: Quarantine | None = None
        self.poller: Poller | None = None
        self.immediate = False
        # Shielded sections (the final writes) that a second signal still ends.
        self._shields: set[anyio.CancelScope] = set()
        self._store: Store | None = None

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
        if s.database_pooler == "transaction" and s.listen and s.listen_database_url is None:
            raise ConfigError(
                "listen = true needs a direct connection to PostgreSQL, and database_url goes "
                "through a transaction pooler [TASKD_DATABASE_POOLER]: set listen_database_url "
                "[TASKD_LISTEN_DATABASE_URL] or listen = false [TASKD_LISTEN]")
        async with anyio.create_task_group() as everything:
            everything.start_soon(self._watch_signals, everything.cancel_scope)
            store = self._store = await self._open_store(url)
            if store is None:  # stopped while waiting for the database
                everything.cancel_scope.cancel()
                return EXIT_IMMEDIATE if self.immediate else 0
            try:
                await self._run(store, url, registry)
            finally:
                # Bounded: the pool's workers may be stuck connecting to a database that is down.
                with anyio.move_on_after(POOL_CLOSE_TIMEOUT + 1, shield=True):
                    await store.close(worker_wait=POOL_CLOSE_TIMEOUT)
                if self.tracing is not None:
                    self.tracing.shutdown()
            everything.cancel_scope.cancel()
        return EXIT_IMMEDIATE if self.immediate else 0

    async def _open_store(self, url: str) -> Store | None:
        """The store, once the database takes a connection (tried again with backoff while it
        is unavailable); None when a signal stops the daemon meanwhile."""
        s = self.settings
        # pool_size counts every connection of the daemon: the notifier's LISTEN is one.
        # All of them opened at the start and kept: a pool that grew under load opened server
        # processes inside the burst that needed them, and one that shrank when idle did so
        # again at the next burst (25 of 32 daemons opened one during a drain:
        # docs/scaling.md). Not warmed with statements on no rows: the counter trigger would
        # keep the plan it made for an empty batch (a 2-daemon drain at 0.58 of its rate).
        pool_max = s.pool_size - 1 if s.listen else s.pool_size
        return await when_available(
            lambda: Store.open(url, min_size=pool_max, max_size=pool_max,
                               application_name=f"taskd {s.executor_id}"[:63],
                               connect_timeout=START_CONNECT_TIMEOUT,
                               pooler=s.database_pooler),
            stop=self.stopping, retry_base=START_RETRY_BASE, retry_max=START_RETRY_MAX,
            connect_timeout=START_CONNECT_TIMEOUT,
        )

    async def _run(self, store: Store, url: str, registry: HandlerRegistry) -> None:
        s = self.settings
        completer = Completer(store, s.executor_id, self.metrics, tracing=self.tracing)
        async with http_clients() as http, anyio.create_task_group() as tg:
            info = await self._register(tg, store)
            notifier = self._start_components(tg, store, url, info, completer)
            self.runner = Runner(
                registry, self.queues, store, completer, self.metrics, http,
                executor_id=s.executor_id,
                thread_limiter=anyio.CapacityLimiter(
                    max(4, sum(c.limit for c in self.capacities.values()))),
                tracing=self.tracing,
            )
            # Only with two queues or more whose claims it can share a statement between: one
            # queue alone claims directly, a hop less.
            shared = [q for q, qs in self.queues.items()
                      if qs.rate is None and qs.cluster_max is None]
            claimer = (Claimer(ClaimerConfig.from_settings(s), store, s.executor_id)
                       if len(shared) >= 2 else None)
            if claimer is not None:
                # In tg, not work: it serves the producers' last (shielded) claims at shutdown.
                tg.start_soon(claimer.run)
            async with anyio.create_task_group() as work:
                self.quarantine = Quarantine(
                    QuarantineConfig(list(self.queues), s.lease_timeout, s.poison_after),
                    store, s.executor_id, self.gate, self.running, self.runner,
                    self.quarantine_wakeup,
                )
                work.start_soon(self.quarantine.run)
                for queue in self.queues:
                    producer = Producer(
                        ProducerConfig.from_settings(s, queue), store, s.executor_id,
                        self.capacities[queue], self.wakeups[queue], self.gate, completer,
                        self.running, self.runner, self.metrics,
                        lender=notifier.lender if notifier is not None else None,
                        tracing=self.tracing, claimer=claimer,
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
                # The final writes' time runs from here, and at its end the pool is closed: that
                # also ends a claim still waiting for a connection (its wait is shielded), which
                # the producers' exit, just below, waits for.
                deadline = anyio.current_time() + s.final_writes_timeout
                tg.start_soon(self._close_pool_at, store, deadline)
            released = await self._finish(store, completer, deadline)
            log.info("stopped", extra={"released": released})
            tg.cancel_scope.cancel()

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
        # Known to `taskd queues pause`, and the rows rate-limited claims count in.
        await register_queues(store, {q: qs.rate for q, qs in self.queues.items()})
        self.health.registered = True
        self.health.db_ok()
        self.metrics.build_info.labels(__version__).set(1)
        self.metrics.start_queues(self.queues)
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
        # LISTEN needs a session of its own: behind a transaction pooler, a direct connection.
        listen_url = (s.listen_database_url.get_secret_value()
                      if s.listen_database_url is not None else url)
        notifier = Notifier(
            listen_url, self.wakeups, application_name=f"taskd-listen {s.executor_id}"[:63],
        ) if s.listen else None
        if notifier is not None:
            tg.start_soon(notifier.run)
        # One poll for every queue, the producers' only wake-up besides the notifier's; the
        # same statement looks for suspects and, when it looks at least as often as the
        # dispatcher's own poll would, for due notifications.
        dispatcher_served = (s.notifications.enabled
                             and s.notifications.poll_interval >= s.poll_interval)
        self.poller = Poller(
            PollerConfig.from_settings(s), store, self.wakeups,
            quarantine=self.quarantine_wakeup,
            dispatcher=self.dispatcher_wakeup if dispatcher_served else None)
        tg.start_soon(self.poller.run)
        tg.start_soon(completer.run)
        # Maintenance, pending timeouts included, for every queue that runs, whichever group
        # serves it: a queue whose executors are all down (or that no daemon serves) still
        # times out.
        tg.start_soon(Rescuer(RescuerConfig.from_settings(s), store, s.active_queues,
                              self.metrics).run)
        tg.start_soon(Scaler(
            store, self.capacities, dict(self.queues), s.scale_check_interval, self.metrics,
            s.executor_id,
        ).run)
        if s.notifications.enabled:
            tg.start_soon(Dispatcher(
                DispatcherConfig.from_settings(s), store, self.metrics,
                wakeup=self.dispatcher_wakeup if dispatcher_served else None).run)
        # Schedules: every daemon ticks, each tick's task is created once (no leader).
        tg.start_soon(Ticker(TickerConfig.from_settings(s), store, self.metrics).run)
        tg.start_soon(StatsCollector(
            store, self.metrics, s.stats_interval, s.pool_size,
            pending_timeouts={q: qs.pending_timeout for q, qs in s.active_queues.items()},
        ).run)
        return notifier

    async def _watch_signals(self, everything: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not self.stopping.is_set():
                    budget = (self.settings.shutdown_grace + self.settings.final_writes_timeout
                              + STOP_MARGIN)
                    log.info("shutting down", extra={"signal": signal.Signals(signum).name,
                                                     "grace_s": self.settings.shutdown_grace,
                                                     "stop_within_s": budget})
                    systemd.notify("STOPPING=1")
                    self.stopping.set()
                    if self.own_process:
                        _exit_later(budget, EXIT_STOP_OVERRUN,
                                    f"the shutdown took longer than {budget:g} s: exiting now")
                else:
                    log.warning("second signal: exiting now")
                    self.immediate = True
                    for scope in list(self._shields):
                        scope.cancel()
                    everything.cancel()
                    if self.own_process:
                        _exit_later(IMMEDIATE_EXIT_WITHIN, EXIT_IMMEDIATE,
                                    "second signal: still running, exiting without cleanup")
                    if self._store is not None:
                        # Closing the pool ends the claims still waiting for a connection
                        # (shielded: a claim in flight must not be cut), so the producers end.
                        with anyio.CancelScope(shield=True):
                            with anyio.move_on_after(POOL_CLOSE_TIMEOUT):
                                await self._store.close(worker_wait=POOL_CLOSE_TIMEOUT)

    @contextmanager
    def _shielded(self, deadline: float) -> Iterator[anyio.CancelScope]:
        """A section shielded from the shutdown's cancellation, ended at ``deadline`` or by a
        second signal."""
        with anyio.CancelScope(shield=True, deadline=deadline) as scope:
            if self.immediate:
                scope.cancel()
            self._shields.add(scope)
            try:
                yield scope
            finally:
                self._shields.discard(scope)

    async def _drain(self, store: Store) -> None:
        """Stop claiming, wait up to the grace period, then stop what is still running."""
        for producer in self.producers:
            producer.stop_claiming()
        if self.quarantine is not None:
            self.quarantine.stop_claiming()
        # The grace period bounds the "stopping" mark too: a database that is down holds it
        # for as long as the pool waits for a connection.
        with anyio.move_on_after(self.settings.shutdown_grace):
            try:
                await store.set_executor_status(self.settings.executor_id, "stopping")
            except DatabaseError as exc:  # the database may be down; shutdown goes on
                log.warning("could not mark the executor stopping: %s", exc)
            await self.running.wait_empty()
        left = self.running.entries()
        if left:
            log.info("grace period over, giving back running subtasks",
                     extra={"count": len(left)})
        for entry in left:
            entry.stop("shutdown")

    async def _close_pool_at(self, store: Store, deadline: float) -> None:
        await anyio.sleep_until(deadline)
        await store.close(worker_wait=POOL_CLOSE_TIMEOUT)

    async def _finish(self, store: Store, completer: Completer, deadline: float) -> int:
        """The final writes: outcomes, given-back subtasks, the executor's status; shielded,
        retried through database errors, and given up at ``deadline`` (the end of
        ``final_writes_timeout``).

        Returns how many subtasks were given back (0: everything finished within the grace).
        """
        s = self.settings
        released = self.runner.released if self.runner is not None else []
        written = False
        with self._shielded(deadline):
            await completer.flush()
            if released:
                await _until_written(lambda: store.release_subtasks(s.executor_id, released))
            await _until_written(lambda: store.set_executor_status(s.executor_id, "stopped"))
            written = True
        if not written and not self.immediate:
            log.warning("final writes not done within final_writes_timeout: leases expire after "
                        "lease_timeout and the rescuer returns the work",
                        extra={"final_writes_timeout_s": s.final_writes_timeout,
                               "unwritten_outcomes": completer.backlog,
                               "released": len(released)})
        return len(released)


async def _until_written(write: Callable[[], Awaitable[object]]) -> None:
    """``write()``, tried again through database errors (the caller bounds the time)."""
    await retry_after_failure(
        write, lambda exc: isinstance(exc, DatabaseError), tries=None, wait_base=0.05,
        wait_max=1.0,
        on_failure=lambda exc: log.warning("final write failed, retrying: %s", exc),
    )


def _exit_later(seconds: float, code: int, why: str) -> None:
    """End the process with ``code`` after ``seconds`` unless it has ended by then: a bound
    that holds whatever the event loop or a thread is stuck in. For ``taskd run`` only."""

    def exit_now() -> None:
        log.warning(why, extra={"exit_code": code})
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        os._exit(code)

    timer = threading.Timer(seconds, exit_now)
    timer.daemon = True
    timer.start()
