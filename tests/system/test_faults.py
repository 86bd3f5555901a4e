"""Faults the chaos test does not cover: a frozen daemon, and poison pills.

Real daemons, real signals (SIGSTOP, SIGKILL, a handler that kills its own process), the
database clock; every wait is a polled condition with a bound.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import psycopg
import pytest

from taskd.queue import Store
from tests.system.chaos_support import Supervisor
from tests.system.daemons import (
    DaemonProcess,
    create_executions_table,
    query,
    scalar,
    wait_for,
)
from tests.system.test_daemon import FAST, counts, submit

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.system]

LEASE = float(FAST["TASKD_LEASE_TIMEOUT"])
RESCUE = float(FAST["TASKD_RESCUE_INTERVAL"])

# The lock that taskd's rescuer took for each pass before rescue needed none: held by a
# process that froze mid-pass, it stopped every rescue in the cluster.
OLD_RESCUER_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended('taskd.rescuer', 0))"


@contextmanager
def started(url: str, *names: str) -> Iterator[list[DaemonProcess]]:
    procs = [DaemonProcess(url, name, FAST) for name in names]
    try:
        for d in procs:
            d.wait_ready()
        yield procs
    finally:
        for d in procs:
            if d.proc.poll() is None:
                d.proc.send_signal(signal.SIGCONT)
            d.close()


def held_by(url: str, executor_id: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM taskd.subtasks WHERE locked_by = %s",
                      executor_id))


def test_a_frozen_daemon_stops_no_one_elses_rescue(database_url: str) -> None:
    create_executions_table(database_url)
    with started(database_url, "holder") as (holder,):
        submit(database_url, 10, ms=60_000)
        wait_for(lambda: held_by(database_url, "holder") == 10, message="10 leases held")
        with started(database_url, "frozen", "survivor") as (frozen, survivor), \
                psycopg.connect(database_url) as stuck:
            # The worst moment: a process froze inside maintenance, holding whatever it held.
            assert stuck.execute(OLD_RESCUER_LOCK).fetchone() == (True,)
            frozen.signal(signal.SIGSTOP)
            holder.kill()
            killed_at = time.monotonic()
            wait_for(lambda: held_by(database_url, "holder") == 0,
                     timeout=LEASE + 3 * RESCUE + 10, message="the killed daemon's leases rescued")
            rescued_after = time.monotonic() - killed_at
            wait_for(lambda: {r[0] for r in query(
                database_url, "SELECT id FROM taskd.executors WHERE status = 'dead'")}
                >= {"holder", "frozen"}, timeout=20, message="both executors marked dead")
            # The survivor picks the work up (the frozen daemon cannot), the crash counted and
            # the attempt given back.
            wait_for(lambda: held_by(database_url, "survivor") == 10, timeout=20,
                     message="the survivor runs the 10 subtasks")
            assert query(database_url, "SELECT DISTINCT attempt, crashes"
                                       " FROM taskd.subtasks") == [(1, 1)]
            assert survivor.proc.poll() is None
    print(f"leases rescued {rescued_after:.2f} s after the kill")  # shown with -s
    # lease_timeout (3 s) + a jittered rescue interval (0.5 s) + polling slack.
    assert rescued_after < LEASE + 1.2 * RESCUE + 2.0, rescued_after


POISON = 3
INNOCENT = 200


def test_poison_pills_fail_alone_and_innocent_subtasks_never_fail(database_url: str) -> None:
    """3 subtasks whose handler kills its process, among 200 half-second ones; 2 daemons at a
    limit of 10, restarted like systemd would; max_attempts 2. Every crash costs the subtasks
    running beside the poison nothing; each poison pill fails after 3 crashes."""
    create_executions_table(database_url)
    payloads = [{"ms": 500, "n": i} for i in range(INNOCENT)]
    for k in range(POISON):
        payloads.insert(40 + 60 * k, {"poison": True, "n": f"poison-{k}"})

    async def submit_all() -> None:
        store = await Store.open(database_url)
        try:
            await store.submit("standard", "record", payloads, max_attempts=2)
        finally:
            await store.close()

    anyio.run(submit_all)
    # A lease long enough that a busy machine's late heartbeat is not taken for a crash (a
    # suspect whose lease expires while it runs alone counts one more crash).
    env = {**FAST, "TASKD_QUEUES__STANDARD__INITIAL": "10", "TASKD_QUEUES__STANDARD__MAX": "10",
           "TASKD_LEASE_TIMEOUT": "4", "TASKD_SHUTDOWN_GRACE": "1"}
    supervisor = Supervisor(database_url, env, ["p1", "p2"], restart_delay=0.2)
    try:
        supervisor.start_all()
        deadline = time.monotonic() + 150
        while counts(database_url).get("pending", 0) + counts(database_url).get("processing", 0):
            assert time.monotonic() < deadline, counts(database_url)
            supervisor.tick()
            time.sleep(0.1)
        restarts = len(supervisor.every) - 2
        assert supervisor.stop_all(timeout=30) == [0, 0]
    finally:
        supervisor.close()
    failed = query(database_url, "SELECT payload, error, crashes FROM taskd.subtasks"
                                 " WHERE status = 'failed' ORDER BY id")
    assert [payload.get("poison") for payload, _, _ in failed] == [True] * POISON, failed
    assert all(error.startswith("Poison: its executor crashed or stopped answering while "
                                "running it, 3 times") and crashes == 3
               for _, error, crashes in failed), failed
    assert counts(database_url) == {"completed": INNOCENT, "failed": POISON}
    # No innocent subtask spent an attempt on a neighbour's crash.
    assert scalar(database_url, "SELECT max(attempt) FROM taskd.subtasks"
                                " WHERE NOT payload ? 'poison'") == 1
    print(f"{restarts} restarts for {POISON} poison pills")  # shown with -s
    # Three crashes per poison pill, each restarting one daemon: the restarts stay bounded.
    assert restarts <= 3 * POISON, (restarts, supervisor.exits, supervisor.logs_of_exits())
    logged = query(database_url, "SELECT error_type, count FROM taskd.error_logs")
    assert logged == [("Poison", POISON)]
