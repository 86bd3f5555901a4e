"""The HTTP clients that handlers share as ``ctx.http``.

httpcore checks every connection in a client's pool before each request (for an idle one, a
readable-socket probe through anyio's attribute lookup). With 50 lumina handlers on one client
that bookkeeping alone was an eighth of the daemon's samples, and the daemon, saturated, saw
each job's end late: 1,000 jobs of 500 ms at a limit of 50 took 1.33-1.59 x the ideal time
here, against 1.16-1.27 x with eight clients. So the daemon keeps a few clients, each with a
small pool, and gives each subtask one of them; they share one TLS context (loading the CA
bundle is slow).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import httpx

SHARDS = 8
TIMEOUT = 30.0


@asynccontextmanager
async def http_clients(shards: int = SHARDS) -> AsyncIterator[Sequence[httpx.AsyncClient]]:
    """``shards`` clients sharing one TLS context; all closed on exit."""
    tls = httpx.create_ssl_context()
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(httpx.AsyncClient(timeout=TIMEOUT, verify=tls))
               for _ in range(shards)]


def client_for(clients: Sequence[httpx.AsyncClient], subtask_id: int) -> httpx.AsyncClient:
    """The client a subtask's handler uses: consecutive subtasks go to different pools."""
    return clients[subtask_id % len(clients)]
