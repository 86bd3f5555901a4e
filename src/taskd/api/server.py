"""Running the API: uvicorn in this process (``taskd api``) or in a background thread (tests,
embedding). Either way the store is opened first, in the server's own event loop, so a bad
database URL or an unmigrated schema stops the start with one clear error.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import anyio
import uvicorn

from taskd import systemd
from taskd.api.app import create_app
from taskd.api.auth import TokenVerifier
from taskd.api.connections import FD_RESERVE, ConnectionLimits, connection_capacity
from taskd.errors import ConfigError
from taskd.queue.database import database_url as resolve_database_url
from taskd.queue.store import Store, when_available
from taskd.settings import Settings, parse_addr

log = logging.getLogger(__name__)

# Seconds an idle connection stays open between requests (uvicorn's default).
KEEP_ALIVE = 5
# The collector's thresholds once started: taskd run's (taskd.executor.daemon.GC_THRESHOLDS),
# not imported from there, which would load the daemon into the API.
GC_THRESHOLDS = (10_000, 10, 10)


class _Server(uvicorn.Server):
    """uvicorn that tells systemd when it listens and when it stops."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            systemd.notify("READY=1\nSTATUS=serving")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        systemd.notify("STOPPING=1")
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # SIGTERM is how systemd stops us: after the drain, exit 0 rather than have uvicorn
        # re-raise the signal (which reads as a crash). SIGINT still ends as an interrupt.
        if sig == signal.SIGTERM:
            self._captured_signals = [s for s in self._captured_signals
                                      if s != signal.SIGTERM]


def backend_options() -> dict[str, Any]:
    """anyio's options for the API's event loop: uvloop where it is installed (the api extra
    installs it on Linux and macOS). Every database round trip and every response goes
    through the loop: asyncio's is Python (its add_reader and remove_reader, twice on every
    psycopg wait, were 5% of the API's CPU under py-spy), uvloop's is C."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT on uvloop where it is installed (see :func:`serve`)."""
    anyio.run(serve, settings, backend_options=backend_options())


def shared_socket(addr: str, backlog: int) -> socket.socket:
    """A socket listening on ``addr`` with SO_REUSEPORT: every process that binds the same
    address so gets its own accept queue, and the kernel spreads new connections among them.
    Raises :class:`ConfigError` naming api.addr when it cannot listen there (in use without
    SO_REUSEPORT, or by another user)."""
    host, port = parse_addr(addr)
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"api.addr {addr}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(where)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"api.addr {addr}: cannot listen with api.reuse_port: "
                          f"{exc.strerror or exc}") from None
    return sock


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The bounds on client connections (see :mod:`taskd.api.connections`); raises the
    process's open-files limit to its hard limit on the way."""
    served, backlog = connection_capacity(settings.api.max_connections,
                                          FD_RESERVE + settings.api.pool_size)
    return ConnectionLimits(read_timeout=settings.api.read_timeout, max_connections=served,
                            backlog=backlog)


def _config(
    app: Any, settings: Settings, limits: ConnectionLimits, **overrides: Any
) -> uvicorn.Config:
    host, port = parse_addr(settings.api.addr)
    return uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=settings.api.access_log,
        proxy_headers=False,
        server_header=False, timeout_graceful_shutdown=10, http=limits.protocol(),
        timeout_keep_alive=KEEP_ALIVE, backlog=limits.backlog, **overrides,
    )


async def serve(settings: Settings, *, database_url: str | None = None) -> None:
    """Open the store, then serve until SIGTERM/SIGINT. Raises :class:`taskd.TaskdError`
    (ConfigError for unusable JWT settings, DatabaseRefused, SchemaError) before serving."""
    TokenVerifier(settings.api)  # refuse a missing or short secret before touching anything
    url = database_url or resolve_database_url(settings)
    # A database that is unavailable (no free slot, starting up) is waited for, as taskd run
    # does; one that refuses the configuration stops the start (DatabaseRefused).
    store = await when_available(
        lambda: Store.open(url, min_size=1, max_size=settings.api.pool_size,
                           application_name="taskd-api", pooler=settings.database_pooler))
    if store is None:
        return
    try:
        app = create_app(settings, store)
        limits = connection_limits(settings)
        asyncio.get_running_loop().set_exception_handler(limits.loop_exception_handler)
        server = _Server(_config(app, settings, limits))
        # What start-up built (the app, its models, the imports) lives as long as the process:
        # frozen, so that no collection walks it again (gc_collect_main was 4% of the CPU), and
        # young collections rarer, as taskd run does (taskd.executor.daemon.tune_gc).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        sockets = ([shared_socket(settings.api.addr, limits.backlog)]
                   if settings.api.reuse_port else None)
        log.info("taskd api listening on %s", settings.api.addr,
                 extra={"reuse_port": settings.api.reuse_port})
        await server.serve(sockets=sockets)
    finally:
        await store.close()


@dataclass
class RunningApi:
    """An API served from a background thread: ``url`` is where it listens."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)


@contextmanager
def serve_in_thread(
    settings: Settings, database_url: str, *, startup_timeout: float = 30.0
) -> Iterator[RunningApi]:
    """Serve on 127.0.0.1 on a free port from a background thread for the block's duration.

    Waits until the server accepts connections. Raises the thread's error (a
    :class:`taskd.TaskdError` for a bad database or settings) or :class:`TimeoutError`.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ready = threading.Event()
    holder: dict[str, uvicorn.Server] = {}
    errors: list[BaseException] = []

    async def main() -> None:
        store = await Store.open(database_url, min_size=1, max_size=settings.api.pool_size,
                                 application_name="taskd-api", pooler=settings.database_pooler)
        try:
            app = create_app(settings, store)
            limits = connection_limits(settings)
            asyncio.get_running_loop().set_exception_handler(limits.loop_exception_handler)
            server = uvicorn.Server(_config(app, settings, limits, log_level="warning"))
            holder["server"] = server
            ready.set()
            await server.serve(sockets=[sock])
        finally:
            await store.close()

    def run() -> None:
        try:
            anyio.run(main, backend_options=backend_options())
        except BaseException as exc:  # handed to the caller's thread below
            errors.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="taskd-api", daemon=True)
    thread.start()
    try:
        if not ready.wait(startup_timeout):
            raise TimeoutError("the API did not start in time")
        if errors:
            raise errors[0]
        server = holder["server"]
        if not _wait_started(server, thread, startup_timeout):
            raise errors[0] if errors else TimeoutError("the API did not start listening")
        yield RunningApi(f"http://127.0.0.1:{port}", server, thread, errors)
    finally:
        if "server" in holder:
            holder["server"].should_exit = True
        thread.join(timeout=30)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread, timeout: float) -> bool:
    """Poll ``server.started`` (set once uvicorn listens) with a deadline."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.started:
            return True
        if not thread.is_alive():
            return False
        time.sleep(0.01)
    return False
