"""Failover under Patroni: three daemons drain a backlog while the primary goes away.

The cluster is the test's own (:class:`tests.system.patroni.PatroniCluster`: one etcd, two
PostgreSQL 15 members, ``synchronous_mode: true``). Daemons, the submitter (``taskd.submit_task``
through :class:`taskd.queue.Store`) and the API's storage path (:class:`ApiStore`, with quota and
idempotency keys) all connect with one libpq multi-host URL,
``postgresql://…@h:p0,h:p1/taskd?target_session_attrs=read-write``, and find the new primary on
their own. Mid-drain, case ``kill-9`` kills the primary's postmaster with SIGKILL; case
``switchover`` asks Patroni for a planned switchover. Afterwards, from the new primary: nothing
lost, no outcome recorded twice, nothing left ``processing``, the quota ledger balanced (every
check of the chaos test, :data:`tests.system.chaos_support.VIOLATIONS`), every submission that
was acknowledged is there, and every outcome the old primary showed just before the fault
(visible there = confirmed by the synchronous standby) is on the new one.

The backlog is ``TASKD_FAILOVER_SUBTASKS`` subtasks (default 3,000, so that each case takes well
under a minute on a loaded machine; the issue's full run is ``TASKD_FAILOVER_SUBTASKS=20000``).
Run alone: ``pytest -p no:xdist -s tests/system/test_failover.py`` (``-s`` prints the summary:
the time from the fault to the first claim on the new primary).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import psycopg
import pytest

from taskd.errors import DatabaseUnavailable
from taskd.queue import Store, migrations
from taskd.queue.accounts import ApiStore, NewTask
from tests.system.chaos_support import (
    AUDIT,
    Supervisor,
    doomed_subtasks,
    format_summary,
    progress,
    violations,
)
from tests.system.daemons import create_executions_table, query, scalar, wait_for
from tests.system.patroni import Member, PatroniCluster

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.system]

SUBTASKS = int(os.environ.get("TASKD_FAILOVER_SUBTASKS", "3000"))
TASK_SIZE = 250  # subtasks per task submitted before the drain
API_TASK_SIZE = 20  # subtasks per API task submitted during the drain
API_EVERY = 0.25  # seconds between API submissions while the drain runs
USERS = ("alice", "bob")
FAULT_AT = 0.3  # share of the first backlog finished when the fault comes
SEED = 20261206
BUDGET = 60.0 + SUBTASKS / 100  # seconds for the drain: a hang detector, not a speed test

ENV = {
    "TASKD_HEARTBEAT_INTERVAL": "1",
    "TASKD_LEASE_TIMEOUT": "10",
    "TASKD_RESCUE_INTERVAL": "1",
    "TASKD_EXECUTOR_DEAD_AFTER": "8",
    "TASKD_POLL_INTERVAL": "0.5",
    "TASKD_SHUTDOWN_GRACE": "5",
    "TASKD_QUEUES__STANDARD__INITIAL": "20",
    "TASKD_QUEUES__STANDARD__MAX": "20",
    "TASKD_QUEUES__STANDARD__RETRY_BASE": "0.2",
    "TASKD_QUEUES__STANDARD__RETRY_MAX": "1",
}


@pytest.fixture
def cluster() -> Iterator[PatroniCluster]:
    started = PatroniCluster(scope="taskd-failover")
    try:
        yield started
    finally:
        started.close()


def payloads(rng: random.Random, count: int, fail_rate: float) -> list[dict[str, Any]]:
    return [{"n": i, "ms": rng.choice((0, 1, 2, 5, 10, 30)), "fail_rate": fail_rate}
            for i in range(count)]


def submit_backlog(url: str, rng: random.Random) -> list[int]:
    async def go() -> list[int]:
        store = await Store.open(url, max_size=2)
        try:
            ids = []
            for _ in range(max(1, SUBTASKS // TASK_SIZE)):
                ids.append(await store.submit("standard", "record",
                                              payloads(rng, TASK_SIZE, 0.05),
                                              priority=rng.choice((0, 10)), max_attempts=5))
            api = ApiStore(store)
            for user in USERS:
                await api.put_account(user, is_member=True, quota_remaining=10_000)
            return ids
        finally:
            await store.close()

    return anyio.run(go)


class ApiSubmitter(threading.Thread):
    """Creates API tasks (quota, idempotency key) every :data:`API_EVERY` s on its own
    multi-host Store until told to stop, retrying each through the failover; records which
    were acknowledged and how long the longest retry took."""

    def __init__(self, url: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.acknowledged: dict[int, int] = {}  # task id -> subtasks
        self.retries = 0
        self.longest_outage = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            anyio.run(self._go)
        except BaseException as exc:
            self.error = exc

    async def _go(self) -> None:
        store = await Store.open(self.url, max_size=1, connect_timeout=2, checkout_timeout=5)
        api = ApiStore(store)
        try:
            n = 0
            while not self.stop.is_set():
                doomed = n % 4 == 0  # fails for sure: a refund
                new = NewTask(
                    user_id=USERS[n % 2], name=f"api-{n}", kind="record", queue="standard",
                    priority=10, params={},
                    payloads=payloads(self.rng, API_TASK_SIZE, 1.0 if doomed else 0.0),
                    max_attempts=1 if doomed else 5, idempotency_key=f"failover-{n}")
                first_try = time.monotonic()
                while True:
                    try:
                        created = await api.create_task(new)
                        break
                    except DatabaseUnavailable:
                        # The key makes a repeat safe: a commit whose answer was lost is
                        # found again, not charged twice.
                        self.retries += 1
                        assert time.monotonic() - first_try < 60, "no primary for 60 s"
                        await anyio.sleep(0.1)
                self.longest_outage = max(self.longest_outage, time.monotonic() - first_try)
                self.acknowledged[created.task_id] = API_TASK_SIZE
                n += 1
                await anyio.sleep(API_EVERY)
        finally:
            await store.close()


def acknowledged_before(member: Member, dbname: str) -> dict[str, Any]:
    """What the primary shows as committed now: with synchronous replication a commit is
    visible only once the standby has it."""
    with psycopg.connect(member.url(dbname), autocommit=True, connect_timeout=2) as conn:
        final = conn.execute("SELECT id, status FROM taskd.subtasks"
                             " WHERE status IN ('completed', 'failed', 'cancelled')").fetchall()
        # Ids, not a count below the highest: identity values are handed out at insert, not
        # at commit, so a transaction still open now may commit a lower id after this read.
        transitions = [r[0] for r in conn.execute("SELECT id FROM public.transitions")]
        executions = conn.execute("SELECT count(*) FROM public.executions").fetchone()
    assert executions is not None
    return {"final": dict(final), "transitions": transitions, "executions": executions[0]}


def writable(member: Member) -> bool:
    """The member answers and is out of recovery (promoted)."""
    try:
        with psycopg.connect(member.url(), autocommit=True, connect_timeout=1) as conn:
            row = conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()
    except psycopg.OperationalError:
        return False
    return bool(row and row[0])


FIRST_ON = {
    # The first claim written on the new primary (the audit trigger's row).
    "claim": "SELECT extract(epoch FROM min(at)) FROM public.transitions"
             " WHERE new_status = 'processing' AND at > to_timestamp(%s) AND server_port = %s",
    # The first write of a handler there (its own connection, outside taskd's pool).
    "handler_write": "SELECT extract(epoch FROM min(started_at)) FROM public.executions"
                     " WHERE started_at > to_timestamp(%s) AND server_port = %s",
}


def first_after(member: Member, dbname: str, since: float, what: str) -> float | None:
    """Seconds from ``since`` (epoch) to the first ``what`` (:data:`FIRST_ON`) written on
    ``member``, or None."""
    try:
        with psycopg.connect(member.url(dbname), autocommit=True, connect_timeout=2) as conn:
            row = conn.execute(FIRST_ON[what], (since, member.pg_port)).fetchone()
    except psycopg.OperationalError:
        return None
    return None if row is None or row[0] is None else float(row[0]) - since


@pytest.mark.parametrize("fault", ["kill-9", "switchover"])
def test_failover_loses_nothing_and_records_each_outcome_once(
    cluster: PatroniCluster, fault: str,
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    old = cluster.wait_healthy()
    new = cluster.other(old)
    with psycopg.connect(old.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE taskd")
    url = cluster.multi_host_url("taskd")
    migrations.migrate_blocking(url)
    create_executions_table(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(AUDIT)
        # Which server wrote each transition: claims replicated from the old primary are
        # not claims on the new one.
        for table in ("transitions", "executions"):
            conn.execute(f"ALTER TABLE public.{table}"
                         " ADD COLUMN server_port integer DEFAULT inet_server_port()")
    backlog = submit_backlog(url, rng)
    first = len(backlog) * TASK_SIZE

    supervisor = Supervisor(url, ENV, [f"ha-{i}" for i in range(3)])
    submitter = ApiSubmitter(url, SEED)
    summary: dict[str, Any] = {"fault": fault, "backlog": first}
    try:
        supervisor.start_all()
        drain_started = time.monotonic()
        submitter.start()
        faulted_at: float | None = None
        snapshot: dict[str, Any] = {}
        while True:
            supervisor.tick()
            assert submitter.error is None, submitter.error
            assert time.monotonic() - drain_started < BUDGET, (
                f"not drained within {BUDGET}s: {progress(url)}\n"
                f"{supervisor.logs_of_exits()}\n{cluster.logs()}")
            counts = progress(url)
            if counts is None:
                time.sleep(0.1)
                continue
            finished = counts["completed"] + counts["failed"] + counts["cancelled"]
            if faulted_at is None and finished >= FAULT_AT * first:
                snapshot = acknowledged_before(old, "taskd")
                faulted_at = time.time()
                if fault == "kill-9":
                    summary["killed_pid"] = cluster.kill_postmaster(old)
                else:
                    cluster.switchover(old, new)
                promoted: list[float] = []

                def claimed(since: float = faulted_at,
                            promoted: list[float] = promoted) -> float | None:
                    if not promoted and writable(new):
                        promoted.append(time.time() - since)
                    return first_after(new, "taskd", since, "claim")

                took = wait_for(claimed, timeout=60, interval=0.05,
                                message="the first claim on the new primary")
                summary["fault_to_first_claim_s"] = round(took, 2)
                summary["fault_to_writable_seen_s"] = round(promoted[0], 2) if promoted \
                    else None
                # A few more API submissions on the new primary, then the drain's end.
                time.sleep(1.0)  # by design: submissions keep coming a little after the fault
                submitter.stop.set()
                submitter.join(timeout=60)
                assert not submitter.is_alive()
                assert submitter.error is None, submitter.error
            if faulted_at is not None and not submitter.is_alive() \
                    and counts["pending"] == 0 and counts["processing"] == 0:
                break
            time.sleep(0.2)
        summary["drain_s"] = round(time.monotonic() - drain_started, 1)
        supervisor.settle()
        exit_codes = supervisor.stop_all()
        exit_logs = supervisor.logs_of_exits()  # before close() removes the logs
        wait_for(lambda: scalar(url, "SELECT count(*) FROM taskd.executors"
                                " WHERE status <> 'stopped'") == 0,
                 message="every executor stopped")
    finally:
        submitter.stop.set()
        supervisor.close()

    leader = cluster.leader()
    assert leader is new, f"the primary is {leader and leader.name}, not {new.name}"
    direct = new.url("taskd")
    broken = violations(direct, doomed_subtasks(direct))
    # Outcomes the old primary showed before the fault, each still there and unchanged.
    final_now = dict(query(direct, "SELECT id, status FROM taskd.subtasks"))
    missing = {i: s for i, s in snapshot["final"].items() if final_now.get(i) != s}
    transitions_now = {r[0] for r in query(direct, "SELECT id FROM public.transitions")}
    transitions_lost = sorted(set(snapshot["transitions"]) - transitions_now)
    tasks_now = dict(query(direct, "SELECT id, total FROM taskd.tasks"))
    lost_submissions = {i: n for i, n in submitter.acknowledged.items()
                        if tasks_now.get(i) != n}
    assert faulted_at is not None
    summary |= {
        "fault_to_first_handler_write_s": round(
            first_after(new, "taskd", faulted_at, "handler_write") or -1, 2),
        "api_tasks_acknowledged": len(submitter.acknowledged),
        "api_retries": submitter.retries,
        "api_longest_outage_s": round(submitter.longest_outage, 2),
        "subtasks": scalar(direct, "SELECT count(*) FROM taskd.subtasks"),
        "final": dict(query(direct, "SELECT status, count(*) FROM taskd.subtasks GROUP BY 1")),
        "acknowledged_outcomes_checked": len(snapshot["final"]),
        "refunds": scalar(direct, "SELECT count(*) FROM taskd.quota_ledger"
                          " WHERE reason = 'refund'"),
        "executions": scalar(direct, "SELECT count(*) FROM public.executions"),
        "daemon_exits": supervisor.exits,
        "test_s": round(time.monotonic() - started, 1),
    }
    print(format_summary(summary))
    assert broken == {}, broken
    assert missing == {}, f"acknowledged outcomes missing on the new primary: {missing}"
    assert transitions_lost == [], f"acknowledged transitions missing: {transitions_lost[:20]}"
    assert lost_submissions == {}, lost_submissions
    assert len(snapshot["final"]) > 0 and len(submitter.acknowledged) > 0
    assert summary["refunds"] > 0
    # The daemons found the new primary on their own: none exited, all stop cleanly.
    assert supervisor.exits == [], (supervisor.exits, supervisor.logs_of_exits())
    assert exit_codes == [0, 0, 0], exit_logs
