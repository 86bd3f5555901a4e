"""The metrics endpoint over real HTTP on loopback: /metrics, /healthz, /readyz."""

from __future__ import annotations

import selectors
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskd.errors import ConfigError
from taskd.metrics import Health, Metrics
from taskd.metrics.server import MetricsServer

pytestmark = pytest.mark.anyio


async def poll_status(http: httpx.AsyncClient, url: str, want: int) -> httpx.Response:
    """GET ``url`` until it answers ``want``, for at most 5 s."""
    with anyio.fail_after(5):
        while True:
            response = await http.get(url)
            if response.status_code == want:
                return response
            await anyio.sleep(0.05)


@pytest.fixture
async def served() -> AsyncIterator[tuple[MetricsServer, str]]:
    metrics = Metrics()
    server = MetricsServer("127.0.0.1:0", metrics, Health(ready_window=0.5), stall_after=0.3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.run)
        with anyio.fail_after(5):
            await server.started.wait()
        assert server.port
        yield server, f"http://127.0.0.1:{server.port}"
        tg.cancel_scope.cancel()


async def test_metrics_parse_with_prometheus_parser(served: tuple[MetricsServer, str]) -> None:
    server, base = served
    server.metrics.subtasks_finished.labels("standard", "completed").inc(3)
    server.metrics.queue_depth.labels("standard", "ready").set(7)
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("taskd_subtasks_finished_total",
                    (("outcome", "completed"), ("queue", "standard")))] == 3
    assert samples[("taskd_queue_depth", (("queue", "standard"), ("status", "ready")))] == 7
    # The standard process and Python metrics of the daemon itself.
    assert samples[("process_resident_memory_bytes", ())] > 10 * 2**20
    assert samples[("process_open_fds", ())] > 0
    assert samples[("python_gc_collections_total", (("generation", "0"),))] >= 0


async def test_openmetrics_is_served_when_asked(served: tuple[MetricsServer, str]) -> None:
    _, base = served
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{base}/metrics", headers={"Accept": "application/openmetrics-text"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_healthz_fails_while_the_event_loop_is_blocked(
    served: tuple[MetricsServer, str],
) -> None:
    _, base = served
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{base}/healthz")).status_code == 200
    seen: list[tuple[int, str]] = []
    observed = threading.Event()

    def probe() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            response = httpx.get(f"{base}/healthz")
            if response.status_code != 200:
                seen.append((response.status_code, response.text))
                break
        observed.set()

    threading.Thread(target=probe, daemon=True).start()
    # Block the event loop on purpose (the fault under test) until the probe saw it.
    observed.wait(timeout=10)
    assert seen and seen[0][0] == 503
    assert seen[0][1].startswith("event loop stalled for")
    # Once the loop runs again, it is healthy again.
    async with httpx.AsyncClient() as http:
        await poll_status(http, f"{base}/healthz", 200)


async def test_readyz_follows_registration_and_database(
    served: tuple[MetricsServer, str],
) -> None:
    server, base = served
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base}/readyz")
        assert (response.status_code, response.text) == (
            503, "not ready: executor not registered\n"
        )
        server.health.registered = True
        response = await http.get(f"{base}/readyz")
        assert response.status_code == 503 and "no database query" in response.text
        server.health.db_ok()
        assert (await http.get(f"{base}/readyz")).status_code == 200
        # No successful query within ready_window (0.5 s): not ready any more.
        response = await poll_status(http, f"{base}/readyz", 503)
        assert "last successful database query" in response.text


async def test_unknown_path_is_404_and_head_has_no_body(
    served: tuple[MetricsServer, str],
) -> None:
    _, base = served
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{base}/nope")).status_code == 404
        head = await http.head(f"{base}/metrics")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0


async def test_an_address_in_use_is_a_config_error(served: tuple[MetricsServer, str]) -> None:
    server, _ = served
    other = MetricsServer(f"127.0.0.1:{server.port}", Metrics(), Health(1.0))
    with pytest.raises(ConfigError, match=r"metrics_addr 127\.0\.0\.1:\d+ .*cannot listen"):
        await other.run()
    assert not other.started.is_set()


async def test_cancelling_run_closes_the_port() -> None:
    server = MetricsServer("127.0.0.1:0", Metrics(), Health(1.0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.run)
        await server.started.wait()
        tg.cancel_scope.cancel()
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{server.port}/healthz")


async def test_the_serving_thread_waits_without_a_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The thread sleeps until a request or the stop: serve_forever's 0.2 s poll woke it five
    times a second, idle or not. It still stops within its bound."""
    waits: list[float | None] = []
    for name in ("PollSelector", "EpollSelector", "SelectSelector"):
        cls = getattr(selectors, name, None)
        if cls is None:
            continue

        def recording(self: Any, timeout: float | None = None, *,
                      _select: Any = cls.select) -> Any:
            if threading.current_thread().name == "taskd-metrics":
                waits.append(timeout)
            return _select(self, timeout)

        monkeypatch.setattr(cls, "select", recording)
    server = MetricsServer("127.0.0.1:0", Metrics(), Health(1.0))
    with anyio.fail_after(10):  # the stop included
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            await server.started.wait()
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{server.port}/healthz")
                assert response.status_code == 200
            await anyio.sleep(0.5)  # by design: the idle stretch whose waits are looked at
            tg.cancel_scope.cancel()
    assert waits, "the serving thread waited in a selector"
    # A request's own read (handle_request) waits bounded, once per connection.
    assert [w for w in waits if w is not None and w < 1.0] == [], waits
