"""The HTTP clients that handlers share: ``ctx.http`` (httpx) and ``ctx.session`` (aiohttp).

httpx is the client handlers are written against. httpcore checks every connection in a
client's pool before each request (for an idle one, a readable-socket probe through anyio's
attribute lookup); with many handlers on one client that bookkeeping showed in the daemon's
profile. So the daemon keeps a few httpx clients, each with a small pool, and
gives each subtask one of them; they share one TLS context (loading the CA bundle is slow).

The aiohttp session is for handlers that make many small requests, as the lumina handler's
polls do: a request costs a fraction of httpx's CPU through it (``python -m bench
http-clients``, docs/benchmarks.md), which at hundreds of requests a second is the
difference between a daemon that is the bottleneck and one that is not. The session keeps
aiohttp's default of at most 100 connections at once; a request beyond them waits for one,
within its own timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import aiohttp
import httpx

SHARDS = 8
TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class HttpClients:
    """What the daemon opens once and its handlers share."""

    clients: Sequence[httpx.AsyncClient]
    session: aiohttp.ClientSession

    def client_for(self, subtask_id: int) -> httpx.AsyncClient:
        """The httpx client a subtask's handler uses: consecutive subtasks use different pools."""
        return self.clients[subtask_id % len(self.clients)]


@asynccontextmanager
async def http_clients(shards: int = SHARDS) -> AsyncIterator[HttpClients]:
    """``shards`` httpx clients sharing one TLS context, and one aiohttp session; all closed
    on exit."""
    tls = httpx.create_ssl_context()
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(timeout=TIMEOUT, verify=tls))
                   for _ in range(shards)]
        # Not trust_env: with it aiohttp reads ~/.netrc, in a thread, on every request. So
        # this session ignores the
        # HTTP(S)_PROXY variables that httpx honours; a handler passes proxy= itself.
        session = await stack.enter_async_context(aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
            connector=aiohttp.TCPConnector(ssl=tls),
        ))
        yield HttpClients(clients, session)
