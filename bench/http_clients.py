"""CPU per request of the HTTP clients a handler can use, polling the fake Lumina API as the
lumina handler does: ``tasks`` pollers, each one GET every ``interval`` seconds.

This is what chose aiohttp for ``ctx.session`` and the lumina handler (docs/handlers.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx

from bench.common import print_table
from bench.taskd_workloads import fake_lumina_process

Get = Callable[[int], Awaitable[object]]
CLIENTS = ("httpx, 1 client", "httpx, 8 clients", "httpx transport, 8", "aiohttp session")


async def _poll(get: Get, tasks: int, interval: float, seconds: float) -> tuple[int, float]:
    """Requests made and CPU seconds spent by ``tasks`` pollers over ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    count = 0

    async def poller(i: int) -> None:
        nonlocal count
        due = loop.time()
        while due < end:
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))
            await get(i)
            count += 1

    cpu = time.process_time()
    await asyncio.gather(*(poller(i) for i in range(tasks)))
    return count, time.process_time() - cpu


async def _measure(name: str, url: str, tasks: int, interval: float,
                   seconds: float) -> tuple[int, float]:
    timeout = httpx.Timeout(10.0)
    if name.startswith("httpx,"):
        clients = [httpx.AsyncClient(timeout=timeout) for _ in range(int(name.split()[1]))]

        async def get_httpx(i: int) -> object:
            return (await clients[i % len(clients)].get(url)).json()

        try:
            return await _poll(get_httpx, tasks, interval, seconds)
        finally:
            for c in clients:
                await c.aclose()
    if name.startswith("httpx transport"):
        transports = [httpx.AsyncHTTPTransport() for _ in range(8)]
        extensions = {"timeout": timeout.as_dict()}

        async def get_transport(i: int) -> object:
            request = httpx.Request("GET", url, extensions=extensions)
            response = await transports[i % len(transports)].handle_async_request(request)
            await response.aread()
            return response.json()

        try:
            return await _poll(get_transport, tasks, interval, seconds)
        finally:
            for t in transports:
                await t.aclose()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0)) as session:

        async def get_aiohttp(i: int) -> object:
            async with session.get(url) as response:
                return await response.json()

        return await _poll(get_aiohttp, tasks, interval, seconds)


def http_clients(tasks: int, interval: float, seconds: float) -> dict[str, Any]:
    table: list[dict[str, Any]] = []
    with fake_lumina_process(job_seconds=3600) as api:
        job = httpx.post(f"{api}/v1/jobs", json={"input": {}}).json()["id"]
        url = f"{api}/v1/jobs/{job}"
        for name in CLIENTS:
            count, cpu = asyncio.run(_measure(name, url, tasks, interval, seconds))
            table.append({"client": name, "requests": count, "cpu_s": cpu,
                          "cpu_us_per_request": cpu / count * 1e6})
    base = table[1]["cpu_us_per_request"]  # what handlers had before: eight httpx clients
    for row in table:
        row["vs_httpx_8"] = row["cpu_us_per_request"] / base
    print_table(f"HTTP clients: {tasks} pollers, one GET every {interval:g} s each, "
                f"{seconds:g} s; CPU of this process only", table)
    return {"tasks": tasks, "interval": interval, "seconds": seconds, "results": table}
