"""Bounds on the API's client connections, which uvicorn alone does not set.

uvicorn times out a connection only between requests (``timeout_keep_alive``): one that sends
half a request holds its socket for as long as the client keeps it open, and enough of them
ran the process out of file descriptors, after which every accept failed (and logged a
traceback) while ``/healthz`` hung. Here, in uvicorn's own httptools protocol:

- a request, headers and body, must arrive within ``read_timeout`` of its first byte (or of the
  connection's opening): otherwise ``408`` and the connection is closed;
- at most ``max_connections`` are served at once: one more is answered ``503`` at once and
  closed, rather than left to fail in ``accept()`` later;
- the open-files limit is raised to its hard limit, and must hold the served connections plus
  what asyncio accepts before it looks at any (up to the listen ``backlog``, twice in the worst
  case): both are lowered to fit when it does not (:func:`connection_capacity`);
- each condition is logged once, then at most once per :data:`LOG_EVERY` seconds with a count.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

LOG_EVERY = 10.0
# File descriptors kept for everything but client connections: the database pool, the
# listening socket, logs, the event loop's own (8 in all when idle).
FD_RESERVE = 64
# uvicorn's default listen backlog: connections the kernel queues for accept().
BACKLOG = 2048

_SERVICE_UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
                        b"content-length: 26\r\nconnection: close\r\n\r\n"
                        b"too many open connections\n")
_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                    b"content-length: 36\r\nconnection: close\r\n\r\n"
                    b"the request did not arrive in time\n")
# A request's headers: at most this many bytes (h11's bound, which uvicorn keeps).
MAX_HEADER_BYTES = 16 * 1024
_FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass
class Throttled:
    """One log line for a condition, then at most one per ``every`` seconds with the count
    of occurrences since the last line."""

    message: str
    every: float = LOG_EVERY
    level: int = logging.WARNING
    _count: int = 0
    _next_at: float = 0.0

    def hit(self, **extra: Any) -> None:
        self._count += 1
        now = time.monotonic()
        if now >= self._next_at:
            log.log(self.level, self.message, extra={**extra, "occurrences": self._count,
                                                      "log_every_s": self.every})
            self._count = 0
            self._next_at = now + self.every


@dataclass
class ConnectionLimits:
    """What the guarded protocols enforce, shared by every connection of one server."""

    read_timeout: float
    max_connections: int
    backlog: int = BACKLOG
    refused: Throttled = field(default_factory=lambda: Throttled(
        "connection limit reached: answering 503 and closing new connections"))
    timed_out: Throttled = field(default_factory=lambda: Throttled(
        "closed connections that did not send a whole request within read_timeout (408)"))
    out_of_fds: Throttled = field(default_factory=lambda: Throttled(
        "accept() failed: out of file descriptors or memory"))

    def protocol(self) -> type[GuardedHttpToolsProtocol]:
        """The protocol class for ``uvicorn.Config(http=...)``, bound to these limits."""
        limits = self

        class Bound(GuardedHttpToolsProtocol):
            pass

        Bound.limits = limits
        return Bound

    def loop_exception_handler(
        self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]
    ) -> None:
        """The event loop's handler: a failed ``accept()`` (asyncio logs a traceback for each,
        then retries) becomes one throttled line; anything else goes to the default."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _FD_ERRORS:
            self.out_of_fds.hit(errno=exc.errno)
            return
        loop.default_exception_handler(context)


class CoalescedWrites:
    """A transport that sends what one step of the event loop writes as one write: uvicorn
    writes a response's head and its body apart, two system calls on the socket where one
    does (each was 3% of the API's CPU a request). Everything else is the transport's own."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():  # else the peer is gone: nobody to tell
                self._transport.write(data)

    def writelines(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp, in C: h11's Python parser and state machine were
    7% of the API's CPU a request) with a deadline for each request and a cap on connections;
    its writes coalesced (:class:`CoalescedWrites`).

    llhttp does not bound a request's headers as h11 does (16 KiB): here a request line and
    headers over :data:`MAX_HEADER_BYTES` (counted as the parser hands them over), or that many
    bytes arriving while the headers are still not whole (a header that never ends is held by
    the parser, not handed over), are answered 400 and the connection closed, as uvicorn
    answers h11's refusal.
    """

    limits: ConnectionLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._refused = False
        self._in_message = False  # a request has begun and is not whole yet
        self._in_headers = False  # ... and its headers are not whole yet
        self._header_bytes = 0  # its request line and headers as the parser handed them over
        self._pending_bytes = 0  # bytes received while its headers were not whole

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]
        if len(self.connections) > self.limits.max_connections:
            self._refuse()
            return
        self._arm()  # a connection that never sends anything is a request that never arrives

    def _refuse(self) -> None:
        """503 and close at once: a refused connection must not hold its descriptor, or a
        flood of them runs the process out all the same."""
        self._refused = True
        self.connections.discard(self)  # it does not count, nor hold up a graceful shutdown
        self.limits.refused.hit(max_connections=self.limits.max_connections)
        self.transport.write(_SERVICE_UNAVAILABLE)
        self.transport.close()

    # The parser's callbacks, run within data_received. One that raises makes the parser
    # raise HttpParserError, which uvicorn answers 400 and closes.
    def on_message_begin(self) -> None:
        self._in_message = self._in_headers = True
        self._header_bytes = self._pending_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise ValueError(f"request headers over {MAX_HEADER_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the 503 is on its way
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
            return
        if self._in_headers:
            self._pending_bytes += len(data)
            if self._pending_bytes > MAX_HEADER_BYTES:
                self._disarm()
                self.send_400_response("Invalid HTTP request received.")
                return
        if self._in_message:
            self._arm()
        else:
            self._disarm()  # whole, or none begun

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        """Start the request's deadline unless it runs already: it counts from the request's
        first byte, whatever arrives after, so a trickle of bytes does not extend it."""
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self.limits.read_timeout, self._expire)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _expire(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        self.limits.timed_out.hit(read_timeout_s=self.limits.read_timeout)
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_REQUEST_TIMEOUT)  # no response under way: say why
        self.transport.close()


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_capacity(wanted: int, reserve: int, backlog: int = BACKLOG) -> tuple[int, int]:
    """``(max_connections, backlog)`` that the open-files limit can hold besides ``reserve``
    other descriptors: ``wanted`` (api.max_connections) and ``backlog``, or less of both when
    it cannot (said once in the log, naming the fix).

    asyncio accepts up to ``backlog`` connections in one go before any of them is looked at,
    and at worst twice before the refused ones are closed: the limit must hold those too.
    """
    limit = raise_open_files_limit()
    if limit == resource.RLIM_INFINITY:
        return wanted, backlog
    room = max(3, limit - reserve)
    backlog = max(1, min(backlog, room // 3))
    served = max(1, min(wanted, room - 2 * backlog))
    if served < wanted:
        log.warning("api.max_connections is more than the open-files limit allows: serving at "
                    "most %d connections (raise LimitNOFILE, or lower api.max_connections)",
                    served, extra={"max_connections": wanted, "open_files_limit": limit,
                                   "backlog": backlog})
    return served, backlog
