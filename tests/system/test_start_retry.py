"""Starting `taskd run` when PostgreSQL cannot take a connection yet, or refuses this one.

What may pass by itself (no server answers; no free connection slot, SQLSTATE 53300) is tried
again with backoff, one log line per try, until the daemon gets in and becomes ready; what will
not (bad credentials 28P01, no such database 3D000) exits 2 at once with one line. The server
is a cluster of the tests' own (they stop it and fill its connection slots).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

from taskd.executor.daemon import START_RETRY_MAX
from tests.system.clusters import APP_ROLE, OwnedCluster
from tests.system.daemons import DaemonProcess, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.system]

ENV = {"TASKD_LISTEN": "false", "TASKD_POOL_SIZE": "2"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[OwnedCluster]:
    # Few slots, passwords over TCP; superuser_reserved_connections keeps its default (3), so
    # the unprivileged role is refused with "remaining connection slots are reserved".
    owned = OwnedCluster(password_auth=True, max_connections=10)
    try:
        owned.create_app_database()
        yield owned
    finally:
        owned.close()


def retries(d: DaemonProcess) -> list[dict[str, Any]]:
    return [e for e in d.events() if e.get("message") == "database unavailable, retrying"]


def waiting(d: DaemonProcess, tries: int) -> bool:
    if d.proc.poll() is not None:
        raise AssertionError(f"the daemon exited {d.proc.returncode}:\n{d.log()[-3000:]}")
    return len(retries(d)) >= tries


def take_every_slot(url: str) -> list[psycopg.Connection[Any]]:
    """Connect as the unprivileged role until the server refuses one more; hold them all."""
    held: list[psycopg.Connection[Any]] = []
    try:
        while True:
            assert len(held) < 100, "the server never ran out of slots"
            try:
                held.append(psycopg.connect(url, autocommit=True))
            except psycopg.OperationalError:
                return held
    except BaseException:
        for conn in held:
            conn.close()
        raise


def test_no_free_connection_slot_at_start_is_waited_for(cluster: OwnedCluster) -> None:
    url = cluster.url()
    held = take_every_slot(url)
    d = DaemonProcess(url, "start-full", ENV)
    try:
        wait_for(lambda: waiting(d, 3), timeout=20, message="three tries")
        assert not any(e.get("message") == "ready" for e in d.events())
        released = time.monotonic()
        for conn in held:
            conn.close()
        held = []
        d.wait_ready(timeout=START_RETRY_MAX + 10)
        ready_after = time.monotonic() - released
        tries = retries(d)
    finally:
        for conn in held:
            conn.close()
        d.close()
    print(f"no free slot: {len(tries)} tries, waits {[e['retry_in_s'] for e in tries]}, "
          f"ready {ready_after:.2f} s after the slots were freed")
    assert all("53300" in e["error"] for e in tries), tries
    # One line per try, each wait twice the one before: 0.5, 1, 2, 4, 5, 5 ... seconds.
    waits = [e["retry_in_s"] for e in tries]
    assert waits == [min(START_RETRY_MAX, 0.5 * 2 ** i) for i in range(len(waits))], waits
    assert ready_after < START_RETRY_MAX + 3, ready_after


def test_a_stopped_database_at_start_is_waited_for(cluster: OwnedCluster) -> None:
    cluster.stop("fast")
    d = DaemonProcess(cluster.url(), "start-stopped", ENV)
    try:
        try:
            wait_for(lambda: waiting(d, 2), timeout=20, message="two tries")
        finally:
            cluster.start()
        d.wait_ready(timeout=START_RETRY_MAX + 10)
        tries = retries(d)
    finally:
        d.close()
    print(f"stopped database: {len(tries)} tries, then ready")
    assert all("database unavailable:" in e["error"] for e in tries), tries


@pytest.mark.parametrize(("change", "sqlstate"), [
    ({"password": "wrong"}, "28P01"),
    ({"dbname": "no_such_database"}, "3D000"),
])
def test_a_refused_configuration_exits_2_at_once(
    cluster: OwnedCluster, change: dict[str, str], sqlstate: str
) -> None:
    url = cluster.url(**{"dbname": "app", "user": APP_ROLE, **change})
    d = DaemonProcess(url, "start-refused", ENV)
    try:
        code = d.wait(timeout=60)
        exited = time.time()
        log = d.log()
        starting = next(e for e in d.events() if e.get("message") == "starting")
    finally:
        d.close()
    # From the daemon's first line (the interpreter's start excluded) to its exit.
    took = exited - datetime.fromisoformat(starting["ts"]).timestamp()
    print(f"{sqlstate}: exit {code} {took:.2f} s after 'starting'")
    assert code == 2, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("taskd: error: database refused the connection"), log[-3000:]
    assert sqlstate in last and "Traceback" not in log, log[-3000:]
    assert took < 3, took  # one refused connection and its diagnosis, not the pool's 10 s
