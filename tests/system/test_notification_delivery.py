"""Task-end webhooks from real daemons to a real receiver on loopback: nothing is lost to a
`kill -9` mid-delivery, a database outage or a database crash and restart (every failed
task's notification arrives at least once, each id a bounded number of times, so the
receiver can deduplicate by id), and 1,000 failed tasks deliver in bounded time over a
bounded number of connections."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from standardwebhooks.webhooks import Webhook

from taskd.executor.dispatcher import target_secret
from taskd.queue.migrations import migrate_blocking
from tests.system.clusters import OwnedCluster
from tests.system.daemons import DaemonProcess, daemons, scalar, wait_for
from tests.system.proxy import CuttableProxy
from tests.webhook_receiver import Receiver, webhook_receiver

KEY = "system test signing key"
ENV = {
    "TASKD_NOTIFICATIONS__SIGNING_KEY": KEY,
    "TASKD_NOTIFICATIONS__RETRY_BASE": "0.2",
    "TASKD_NOTIFICATIONS__RETRY_MAX": "1",
    "TASKD_NOTIFICATIONS__POLL_INTERVAL": "0.2",
    "TASKD_NOTIFICATIONS__TIMEOUT": "2",
    "TASKD_NOTIFICATIONS__BATCH_SIZE": "20",
    "TASKD_NOTIFICATIONS__MAX_CONNECTIONS": "10",
    "TASKD_NOTIFICATIONS__LEASE_TIMEOUT": "5",
    "TASKD_STATS_INTERVAL": "1",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as r:
        yield r


def failed_tasks(url: str, target: str, n: int) -> set[int]:
    """n tasks with the target, ended failed by one UPDATE (the counter trigger writes the
    outbox rows, as for any end); returns the notification ids."""
    migrate_blocking(url, allow_http_private=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT taskd.submit_task('standard', 'fail', '[{}]', max_attempts => 1,"
            " notify_url => %s) FROM generate_series(1, %s)", (target, n))
        conn.execute("UPDATE taskd.subtasks SET status = 'failed', completed_at = now(),"
                     " error = 'RequestedFailure: requested failure'")
        rows = conn.execute("SELECT id FROM taskd.notifications").fetchall()
    assert len(rows) == n
    return {r[0] for r in rows}


def delivered(url: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM taskd.notifications"
                           " WHERE status = 'delivered'"))


def arrived_ids(receiver: Receiver) -> set[int]:
    return {int(i.removeprefix("taskd_notification_")) for i in receiver.ids()}


def test_kill_9_mid_delivery_loses_no_notification(database_url: str,
                                                   receiver: Receiver) -> None:
    target = receiver.url("/slow/0.3")
    ids = failed_tasks(database_url, target, 120)
    with daemons(database_url, 1, **ENV) as (first,):
        wait_for(lambda: len(receiver.received()) >= 15, timeout=30,
                 message="deliveries in flight")
        first.kill()
    in_flight = int(scalar(database_url, "SELECT count(*) FROM taskd.notifications"
                                         " WHERE status = 'pending' AND locked_by IS NOT NULL"))
    assert delivered(database_url) < len(ids)  # killed mid-way, with claims outstanding
    second = DaemonProcess(database_url, "after-kill", {**ENV})
    try:
        second.wait_ready()
        wait_for(lambda: delivered(database_url) == len(ids), timeout=60,
                 message="every notification delivered after the kill")
    finally:
        second.close()
    counts = receiver.ids()
    assert arrived_ids(receiver) == ids
    assert max(counts.values()) <= 3, counts.most_common(3)
    # What the killed daemon had claimed was delivered again once its lease ran out.
    assert in_flight > 0 or sum(counts.values()) == len(ids)
    secret = target_secret(target, KEY, {})
    assert secret is not None
    for got in receiver.received()[:20]:
        Webhook(secret).verify(got.body, got.headers)


def test_a_database_outage_mid_delivery_loses_no_notification(
    database_url: str, receiver: Receiver
) -> None:
    ids = failed_tasks(database_url, receiver.url("/slow/0.2"), 80)
    parts = conninfo_to_dict(database_url)
    with CuttableProxy((str(parts.get("host", "127.0.0.1")), int(parts.get("port", 5432)))) \
            as proxy:
        via_proxy = make_conninfo(database_url, host="127.0.0.1", port=str(proxy.port))
        with daemons(via_proxy, 1, **ENV):
            wait_for(lambda: len(receiver.received()) >= 10, timeout=30,
                     message="deliveries in flight")
            proxy.cut()
            time.sleep(3)  # the outage itself, not a synchronisation
            proxy.restore()
            wait_for(lambda: delivered(database_url) == len(ids), timeout=60,
                     message="every notification delivered after the outage")
    assert arrived_ids(receiver) == ids
    assert max(receiver.ids().values()) <= 3


def test_a_thousand_failed_tasks_deliver_in_bounded_time_over_bounded_connections(
    database_url: str, receiver: Receiver
) -> None:
    ids = failed_tasks(database_url, receiver.url("/ok"), 1000)
    # A generous timeout: on a loaded machine a 2-s one sends some again (at least once).
    env = {**ENV, "TASKD_NOTIFICATIONS__BATCH_SIZE": "100",
           "TASKD_NOTIFICATIONS__TIMEOUT": "10", "TASKD_NOTIFICATIONS__LEASE_TIMEOUT": "120"}
    with daemons(database_url, 1, **env):
        started = time.monotonic()
        wait_for(lambda: delivered(database_url) == len(ids), timeout=60,
                 message="1,000 notifications delivered")
        took = time.monotonic() - started
    assert arrived_ids(receiver) == ids
    assert max(receiver.ids().values()) <= 2
    # max_connections = 10: never more open at once (httpx may replace idle ones over time).
    assert receiver.most_open_connections <= 10
    assert receiver.connections() < 100  # connections are reused, not one per delivery
    assert took < 60
    assert urlsplit(receiver.base).hostname == "127.0.0.1"


def test_a_database_crash_and_restart_mid_delivery_loses_no_notification(
    receiver: Receiver,
) -> None:
    """PostgreSQL of the test's own, stopped `immediate` (a crash: no checkpoint, recovery at
    start) while deliveries are in flight, then started again."""
    cluster = OwnedCluster(synchronous_commit="on")
    try:
        url = cluster.create_app_database()
        ids = failed_tasks(url, receiver.url("/slow/0.2"), 80)
        with daemons(url, 1, **ENV):
            wait_for(lambda: len(receiver.received()) >= 10, timeout=30,
                     message="deliveries in flight")
            cluster.stop("immediate")
            time.sleep(2)  # the outage itself, not a synchronisation
            cluster.start()
            wait_for(lambda: delivered(url) == len(ids), timeout=90,
                     message="every notification delivered after the restart")
        assert arrived_ids(receiver) == ids
        assert max(receiver.ids().values()) <= 3
    finally:
        cluster.close()
