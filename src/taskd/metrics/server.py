"""The daemon's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

The HTTP server runs in a thread of its own, so that ``/metrics`` still answers while the event
loop is blocked; ``/healthz`` then says so. The event loop proves it is alive by moving a
timestamp forward every :data:`TICK_INTERVAL`; ``/healthz`` answers 503 when that timestamp is
older than ``stall_after``. ``/readyz`` answers 200 once the executor is registered and a
database query succeeded within :attr:`Health.ready_window`, 503 otherwise.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
from prometheus_client.exposition import choose_encoder

from taskd.errors import ConfigError
from taskd.metrics import Health, Metrics
from taskd.settings import parse_addr

log = logging.getLogger(__name__)

TICK_INTERVAL = 0.5
# Seconds the serving thread is given to end at shutdown (a request it is reading is bounded
# by _Server.timeout; handlers run in threads of their own).
STOP_WITHIN = 2.0
DEFAULT_STALL_AFTER = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A restarted daemon must bind again at once, even with connections in TIME_WAIT.
    allow_reuse_address = True
    # handle_request()'s own wait once serve_until saw a connection waiting: bounded, should
    # the client have gone meanwhile.
    timeout = 1.0

    def serve_until(self, wake: socket.socket, stop: threading.Event) -> None:
        """Serve until ``stop`` is set (and ``wake`` made readable): one wait on both sockets,
        without a timeout. ``serve_forever`` woke its thread every ``poll_interval`` to look
        for a shutdown, five times a second with 0.2 s, idle or not: a tenth of an idle
        daemon's wake-ups (docs/scaling.md)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while not stop.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self and not stop.is_set():
                        self.handle_request()


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``addr`` (``host:port``; port 0
    picks a free port, readable as :attr:`port` once :attr:`started` is set).
    """

    def __init__(
        self, addr: str, metrics: Metrics, health: Health, *,
        stall_after: float = DEFAULT_STALL_AFTER,
    ) -> None:
        self.host, self.requested_port = parse_addr(addr)
        self.metrics = metrics
        self.health = health
        self.stall_after = stall_after
        self.started = anyio.Event()
        self.port: int | None = None
        # Written by the event loop, read by the HTTP threads; a float store is atomic.
        self.last_tick = time.monotonic()

    def loop_stalled_for(self) -> float | None:
        """Seconds since the event loop last ticked, when that is more than ``stall_after``."""
        age = time.monotonic() - self.last_tick
        return age if age > self.stall_after else None

    async def run(self) -> None:
        """Serve until cancelled. Raises :class:`ConfigError` when ``addr`` cannot be bound."""
        server = self._bind()
        self.port = server.server_address[1]
        wake, waker = socket.socketpair()
        stop = threading.Event()
        thread = threading.Thread(
            target=server.serve_until, args=(wake, stop), name="taskd-metrics", daemon=True,
        )
        thread.start()
        log.info("metrics endpoint listening", extra={"addr": f"{self.host}:{self.port}"})
        self.started.set()
        try:
            while True:
                self.last_tick = time.monotonic()
                await anyio.sleep(TICK_INTERVAL)
        finally:
            stop.set()
            waker.send(b"x")
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join, STOP_WITHIN)
            server.server_close()
            wake.close()
            waker.close()

    def _bind(self) -> _Server:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("Server", (_Server,), {"address_family": family})
        try:
            server: _Server = server_class((self.host, self.requested_port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"metrics_addr {self.host}:{self.requested_port} [TASKD_METRICS_ADDR]: "
                f"cannot listen: {exc.strerror or exc}"
            ) from exc
        return server


class _Handler(BaseHTTPRequestHandler):
    server_owner: MetricsServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        owner = self.server_owner
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(owner.metrics.registry), content_type)
        elif path == "/healthz":
            stalled = owner.loop_stalled_for()
            if stalled is None:
                self._reply(200, b"ok\n")
            else:
                self._reply(503, f"event loop stalled for {stalled:.1f}s\n".encode())
        elif path == "/readyz":
            health = owner.health
            if health.ready():
                self._reply(200, b"ready\n")
            elif not health.registered:
                self._reply(503, b"not ready: executor not registered\n")
            elif health.last_db_ok is None:
                self._reply(503, b"not ready: no database query has succeeded\n")
            else:
                age = time.monotonic() - health.last_db_ok
                self._reply(
                    503, f"not ready: last successful database query {age:.1f}s ago "
                    f"(window {health.ready_window:g}s)\n".encode()
                )
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
               ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        # One line per scrape would drown the daemon's log; errors still go to debug.
        log.debug("metrics http: " + format, *args)
