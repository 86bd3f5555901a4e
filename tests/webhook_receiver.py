"""A real HTTP webhook receiver on loopback, for the dispatcher's tests.

A threading HTTP/1.1 server. Each request's path picks an answer: ``/ok`` 200, ``/status/<n>``
that status, ``/slow/<seconds>`` 200 after a delay, ``/close`` closes the connection without
answering, ``/retry-after/<seconds>`` 429 with that Retry-After. ``/flaky/<n>/<status>``
answers ``status`` to the first n requests of each webhook-id, then 200. Every request is
recorded with its headers, body and the client's port (one port per connection).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int
    at: float


class Receiver:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.lock = threading.Lock()
        self.requests: list[Received] = []
        self.per_id: Counter[str] = Counter()
        self.down = False  # True: every request's connection is closed unanswered
        self.open_connections = 0
        self.most_open_connections = 0  # the most connections open at once

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def url(self, path: str) -> str:
        return self.base + path

    def received(self, path_prefix: str = "") -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def ids(self, path_prefix: str = "") -> Counter[str]:
        """How many times each webhook-id arrived (a receiver deduplicates by it)."""
        return Counter(r.headers["webhook-id"] for r in self.received(path_prefix))

    def connections(self) -> int:
        """Connections that carried requests, over the receiver's life (not at once)."""
        return len({r.client_port for r in self.received()})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    receiver: Receiver

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.receiver.lock:
            self.receiver.open_connections += 1
            self.receiver.most_open_connections = max(self.receiver.most_open_connections,
                                                      self.receiver.open_connections)

    def finish(self) -> None:
        with self.receiver.lock:
            self.receiver.open_connections -= 1
        super().finish()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        receiver = self.receiver
        # A sender killed mid-request (kill -9) leaves a body cut short: not a delivery, and
        # its signature could never verify. The connection is gone; nothing is recorded.
        if receiver.down or len(body) < length:
            self.close_connection = True
            return
        with receiver.lock:
            receiver.requests.append(Received(self.path, headers, body, self.client_address[1],
                                              time.monotonic()))
            receiver.per_id[headers.get("webhook-id", "")] += 1
            seen = receiver.per_id[headers.get("webhook-id", "")]
        parts = self.path.strip("/").split("/")
        if parts[0] == "close":
            self.close_connection = True
            return
        if parts[0] == "slow":
            time.sleep(float(parts[1]))
            self._answer(200)
        elif parts[0] == "status":
            self._answer(int(parts[1]))
        elif parts[0] == "retry-after":
            self._answer(429, {"retry-after": parts[1]})
        elif parts[0] == "flaky":
            self._answer(int(parts[2]) if seen <= int(parts[1]) else 200)
        else:
            self._answer(200)

    def _answer(self, status: int, headers: dict[str, str] | None = None) -> None:
        text = b"ok" if status < 300 else b"no"
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a dispatcher opening 20 connections at once
    # then sees some reset while the accepting thread waits for the GIL, and the delivery
    # fails for the receiver's sake, not the dispatcher's. A real receiver listens deeper.
    request_queue_size = 128
    daemon_threads = True


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 and a free port, stopped on exit."""
    server = _Server(("127.0.0.1", 0), _Handler)
    receiver = Receiver(server)
    handler = type("Handler", (_Handler,), {"receiver": receiver})
    server.RequestHandlerClass = handler
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
