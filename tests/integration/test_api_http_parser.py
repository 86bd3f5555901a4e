"""The API's HTTP parser is httptools' (taskd.api.connections.GuardedHttpToolsProtocol), and it
bounds a request's headers as h11 did: more than 16 KiB before they end is 400 and the
connection is closed, wherever the request was cut into packets."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest

from taskd.api import RunningApi
from taskd.api.connections import MAX_HEADER_BYTES, GuardedHttpToolsProtocol


def _exchange(api: RunningApi, chunks: list[bytes]) -> bytes:
    """Send ``chunks`` one by one, then read until the API closes the connection (or 10 s)."""
    where = urlsplit(api.url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # refused midway: the answer is already on its way
        received = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
        return received


def _headers(total: int) -> list[bytes]:
    """Header lines of about ``total`` bytes, each 1 KiB."""
    line = b"X-Filler: " + b"a" * 1012 + b"\r\n"
    return [line] * (total // len(line))


def test_the_protocol_is_httptools(api: RunningApi) -> None:
    assert issubclass(api.server.config.http, GuardedHttpToolsProtocol)  # type: ignore[arg-type]


@pytest.mark.parametrize("packets", ["one", "per line", "a header that never ends"])
def test_headers_over_the_bound_are_400_and_closed(api: RunningApi, packets: str) -> None:
    lines = [b"GET /healthz HTTP/1.1\r\nHost: api\r\n", *_headers(MAX_HEADER_BYTES + 4096),
             b"\r\n"]
    chunks = {"one": [b"".join(lines)], "per line": lines,
              "a header that never ends": [lines[0] + b"X-Endless: ",
                                           *[b"a" * 1024] * (MAX_HEADER_BYTES // 1024 + 4)],
              }[packets]
    answer = _exchange(api, chunks)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"connection: close" in answer.lower()


def test_headers_under_the_bound_are_served(api: RunningApi) -> None:
    lines = [b"GET /healthz HTTP/1.1\r\nHost: api\r\nConnection: close\r\n",
             *_headers(MAX_HEADER_BYTES - 4096), b"\r\n"]
    answer = _exchange(api, lines)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
