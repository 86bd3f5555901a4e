"""Stopping `taskd run` while the database is down: bounded, and a second signal is immediate.

The final writes (outcomes, given-back subtasks, the executor's status) cannot happen with the
database stopped: the daemon gives them ``final_writes_timeout`` and exits, so that a stop takes
at most ``shutdown_grace + final_writes_timeout`` (plus a margin), inside the unit's
``TimeoutStopSec``; the leases then expire and the rescuer returns the work. The PostgreSQL is
the test's own (it is stopped).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from taskd.executor.daemon import IMMEDIATE_EXIT_WITHIN
from tests.system.clusters import OwnedCluster
from tests.system.daemons import DaemonProcess, scalar, wait_for
from tests.system.test_daemon import submit

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.system]

GRACE = 2.0
FINAL_WRITES = 2.0
ENV = {
    "TASKD_SHUTDOWN_GRACE": str(GRACE),
    "TASKD_FINAL_WRITES_TIMEOUT": str(FINAL_WRITES),
    "TASKD_HEARTBEAT_INTERVAL": "0.5",
    "TASKD_LEASE_TIMEOUT": "3",
    "TASKD_EXECUTOR_DEAD_AFTER": "2",
    "TASKD_POLL_INTERVAL": "0.5",
}


@pytest.fixture
def running_without_database() -> Iterator[DaemonProcess]:
    """A daemon running three 60-second handlers, then its database stopped (a crash)."""
    cluster = OwnedCluster()
    daemon: DaemonProcess | None = None
    try:
        url = cluster.create_app_database()
        submit(url, 3, kind="sleep", ms=60_000)
        daemon = DaemonProcess(url, "stop-timing", ENV)
        daemon.wait_ready()
        wait_for(lambda: scalar(url, "SELECT count(*) FROM taskd.subtasks"
                                " WHERE status = 'processing'") == 3,
                 message="three handlers running")
        cluster.stop("immediate")
        yield daemon
    finally:
        if daemon is not None:
            daemon.close()
        cluster.close()


def test_sigterm_with_the_database_down_exits_after_grace_and_final_writes(
    running_without_database: DaemonProcess,
) -> None:
    d = running_without_database
    sent = time.monotonic()
    d.signal(signal.SIGTERM)
    code = d.wait(timeout=60)
    took = time.monotonic() - sent
    print(f"SIGTERM with the database down: exit {code} after {took:.2f} s")
    assert code == 0, d.log()[-3000:]
    # Grace (the handlers run on) then the final writes' budget, then out: not the old
    # max(10 s, lease_timeout) of shielded writes after a shielded "stopping" mark.
    assert GRACE <= took < GRACE + FINAL_WRITES + 1.5, (took, d.log()[-3000:])
    messages = [e.get("message", "") for e in d.events()]
    assert any(m.startswith("final writes not done") for m in messages), messages


def test_a_second_signal_with_the_database_down_exits_within_a_second(
    running_without_database: DaemonProcess,
) -> None:
    d = running_without_database
    d.signal(signal.SIGTERM)
    wait_for(lambda: any(e.get("message") == "shutting down" for e in d.events()),
             timeout=10, message="the shutdown begun")
    sent = time.monotonic()
    d.signal(signal.SIGTERM)
    code = d.wait(timeout=60)
    took = time.monotonic() - sent
    print(f"second SIGTERM with the database down: exit {code} after {took:.3f} s")
    if took > 0.4:
        print("\n".join(d.log().splitlines()[-30:]))
    assert code == 130, d.log()[-3000:]
    assert took < 1.0, (took, IMMEDIATE_EXIT_WITHIN, d.log()[-3000:])
