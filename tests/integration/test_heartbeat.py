"""The heartbeat against a real database behind a link that a test can cut."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import anyio
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from taskd.executor.capacity import Capacity
from taskd.executor.gate import ClaimGate
from taskd.executor.heartbeat import Heartbeat, HeartbeatConfig
from taskd.executor.running import RunningSet
from taskd.metrics import Health, Metrics
from taskd.queue import ExecutorInfo, Store, maintenance
from tests.factories import fetch_one, submit, wait_until
from tests.system.proxy import CuttableProxy

pytestmark = pytest.mark.anyio


async def test_heartbeat_extends_leases_and_pauses_claims_when_it_cannot_beat(
    database_url: str, store: Store, conn: Any
) -> None:
    parts = conninfo_to_dict(database_url)
    with CuttableProxy((str(parts["host"]), int(parts.get("port", 5432)))) as proxy:
        url = make_conninfo(database_url, host="127.0.0.1", port=str(proxy.port))
        own = await Store.open(url, max_size=2, connect_timeout=2, checkout_timeout=0.3)
        info = ExecutorInfo("hb", "default", "host", 1, "test")
        await own.register_executor(info)
        await submit(store, 1)
        [claimed] = await own.claim_subtasks("standard", "hb", 1, lease_timeout=0.5)
        running = RunningSet()
        running.add(claimed)
        gate = ClaimGate()
        heartbeat = Heartbeat(HeartbeatConfig(interval=0.1, lease_timeout=1.0), own, info,
                              {"standard": Capacity(3)}, running, gate, Metrics(), Health(10))
        heartbeat.signals.beat.arm()
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat.run)
            for _ in range(3):
                await heartbeat.signals.beat.wait()
            # Each beat moves the lease to now() + 1 s: past the claim's own 0.5 s.
            extended = await fetch_one(conn, "SELECT lease_expires_at - started_at"
                                       " FROM taskd.subtasks WHERE id = %s", claimed.id)
            assert extended > timedelta(seconds=1)
            assert gate.is_open
            proxy.cut()
            await wait_until(lambda: not gate.is_open)
            assert gate.reason and "longer than the lease" in gate.reason
            proxy.restore()
            await wait_until(lambda: gate.is_open)
            tg.cancel_scope.cancel()
        await own.close()
    row = await fetch_one(conn, "SELECT concurrency, running FROM taskd.executors")
    assert row == ({"standard": 3}, {"standard": 0})


async def test_a_lost_lease_stops_the_handler(store: Store) -> None:
    await submit(store, 1)
    [claimed] = await store.claim_subtasks("standard", "hb", 1, lease_timeout=60)
    info = ExecutorInfo("hb", "default", "host", 1, "test")
    await store.register_executor(info)
    running = RunningSet()
    entry = running.add(claimed)
    entry.scope = anyio.CancelScope()  # as a worker sets it while the handler runs
    # Another executor's rescue took it: the lease is no longer this executor's.
    later = await store.database_now() + timedelta(seconds=61)
    await maintenance.rescue_expired_leases(store, now=later)
    heartbeat = Heartbeat(HeartbeatConfig(interval=1, lease_timeout=60), store, info, {},
                          running, ClaimGate(), Metrics(), Health(10))
    await heartbeat.beat()
    assert entry.stop_reason == "lease_lost"
    assert entry.scope.cancel_called



async def test_heartbeats_come_up_to_a_tenth_of_an_interval_sooner(
    store: Store, conn: Any
) -> None:
    """Jittered, never later: daemons started together drift out of step, and the lease and
    the watchdog still get a beat every interval. Measured on the database clock (each
    beat's last_heartbeat_at), so a late test task does not blur it."""
    interval = 0.3
    info = ExecutorInfo("hb", "default", "host", 1, "test")
    await store.register_executor(info)
    heartbeat = Heartbeat(HeartbeatConfig(interval=interval, lease_timeout=3.0), store, info,
                          {}, RunningSet(), ClaimGate(), Metrics(), Health(10))
    heartbeat.signals.beat.arm()
    beats = set()
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat.run)
        for _ in range(12):
            await heartbeat.signals.beat.wait()
            beats.add(await fetch_one(conn, "SELECT last_heartbeat_at FROM taskd.executors"
                                            " WHERE id = 'hb'"))
        tg.cancel_scope.cancel()
    ordered = sorted(beats)
    # Gaps between beats that followed each other (a test task that woke late saw only the
    # second of two).
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ordered)
            if (b - a).total_seconds() < 1.5 * interval]
    assert len(gaps) >= 6, ordered
    # A sleep never ends early: without jitter every gap is at least the interval. With it,
    # a gap is shorter unless its wait fell in the top few ms of its 30 ms range (a beat's own
    # time): all of them, about 0.1 ** 6.
    assert min(gaps) < interval, gaps
    assert min(gaps) >= interval * 0.9 - 0.005, gaps
