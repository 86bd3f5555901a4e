"""The dispatcher alone against a real database and a real HTTP receiver on loopback: signed
Standard Webhooks deliveries, retries and dead letters, Retry-After, redelivery, and no
notification delivered by two dispatchers at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from taskd.executor.dispatcher import Dispatcher, DispatcherConfig, target_secret
from taskd.executor.wakeup import Wakeup
from taskd.metrics import Metrics
from taskd.queue import migrations, notifications
from taskd.queue.store import Store
from taskd.types import Outcome
from tests.factories import submit, wait_until
from tests.webhook_receiver import Receiver, webhook_receiver

pytestmark = pytest.mark.anyio

KEY = "test signing key"
LEASE = 30.0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as r:
        yield r


def dispatcher(store: Store, executor_id: str = "d1", **options: Any) -> Dispatcher:
    config = DispatcherConfig(executor_id=executor_id, signing_key=KEY, **{
        "timeout": 2.0, "retry_base": 0.05, "retry_max": 0.2, "lease_timeout": 20.0,
        **options})
    return Dispatcher(config, store, Metrics())


async def failed_tasks(store: Store, conn: Any, url: str, n: int = 1, **options: Any
                       ) -> list[int]:
    """n tasks with target url, each failed by the completer's batch."""
    await migrations.migrate(conn, allow_http_private=True)
    ids = [await submit(store, 1, name=f"job {i}", notify_url=url, **options) for i in range(n)]
    claimed = await store.claim_subtasks("standard", "e1", n, LEASE)
    await store.record_outcomes("e1", [
        Outcome(c.id, c.attempt, "failed", error="ValueError: disk full") for c in claimed])
    return ids


async def rows(conn: Any) -> list[tuple[Any, ...]]:
    cur = await conn.execute(
        "SELECT status, attempts, last_status_code, last_error, run_after > now() AS later"
        " FROM taskd.notifications ORDER BY id")
    return list(await cur.fetchall())


async def pass_once(d: Dispatcher) -> int:
    async with d.client() as http:
        return await d.deliver_once(http)


async def until_settled(d: Dispatcher, conn: Any) -> None:
    """Passes until nothing is pending (retries are due within retry_max), for 20 s at most."""
    with anyio.fail_after(20):
        async with d.client() as http:
            while True:
                await d.deliver_once(http)
                cur = await conn.execute(
                    "SELECT count(*) FROM taskd.notifications WHERE status = 'pending'")
                if (await cur.fetchone()) == (0,):
                    return
                await anyio.sleep(0.05)


async def test_a_delivery_is_signed_per_standard_webhooks_and_says_what_ended(
    store: Store, conn: Any, receiver: Receiver
) -> None:
    [task] = await failed_tasks(store, conn, receiver.url("/ok"))
    assert await pass_once(dispatcher(store, task_link="https://taskd.example/v1/tasks/{id}")) == 1
    [got] = receiver.received()
    secret = target_secret(receiver.url("/ok"), KEY, {})
    assert secret is not None
    body = Webhook(secret).verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(target_secret("https://other.example/", KEY, {}) or "").verify(
            got.body, got.headers)
    assert got.headers["webhook-id"] == "taskd_notification_1"
    assert body["type"] == "task.failed"
    data = body["data"]["task"]
    assert data["id"] == task and data["name"] == "job 0" and data["queue"] == "standard"
    assert data["kind"] == "noop" and data["status"] == "failed"
    assert data["counts"] == {"total": 1, "completed": 0, "failed": 1, "cancelled": 0}
    assert data["error"] == {"type": "ValueError", "message": "disk full"}
    assert data["link"] == f"https://taskd.example/v1/tasks/{task}"
    assert data["created_at"] and data["ended_at"]
    assert await rows(conn) == [("delivered", 1, 200, None, False)]


async def test_an_explicit_secret_per_target_wins(store: Store, conn: Any,
                                                  receiver: Receiver) -> None:
    await failed_tasks(store, conn, receiver.url("/ok"))
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    await pass_once(dispatcher(store, secrets={receiver.url("/ok"): secret}))
    [got] = receiver.received()
    Webhook(secret).verify(got.body, got.headers)


@pytest.mark.parametrize(("path", "code", "error"), [
    ("/status/500", 500, "HTTP 500"),
    ("/status/503", 503, "HTTP 503"),
    ("/status/408", 408, "HTTP 408"),
    ("/slow/3", None, "no answer within 1 s"),
    ("/close", None, "RemoteProtocolError"),
])
async def test_faults_of_the_receiver_are_retried_with_backoff(
    store: Store, conn: Any, receiver: Receiver, path: str, code: int | None, error: str,
) -> None:
    await failed_tasks(store, conn, receiver.url(path))
    await pass_once(dispatcher(store, timeout=1.0, retry_base=60.0, retry_max=120.0))
    [(status, attempts, last_code, last_error, later)] = await rows(conn)
    assert (status, attempts, last_code, later) == ("pending", 1, code, True)
    assert error in last_error


async def test_a_receiver_that_is_down_is_retried(store: Store, conn: Any) -> None:
    with webhook_receiver() as gone:
        url = gone.url("/ok")
    await failed_tasks(store, conn, url)
    await pass_once(dispatcher(store, retry_base=60.0, retry_max=120.0))
    [(status, attempts, code, error, later)] = await rows(conn)
    assert (status, attempts, code, later) == ("pending", 1, None, True)
    assert "ConnectError" in error


async def test_a_flaky_receiver_gets_it_in_the_end(store: Store, conn: Any,
                                                   receiver: Receiver) -> None:
    await failed_tasks(store, conn, receiver.url("/flaky/2/502"), 3)
    await until_settled(dispatcher(store), conn)
    assert [r[:3] for r in await rows(conn)] == [("delivered", 3, 200)] * 3
    assert set(receiver.ids().values()) == {3}


@pytest.mark.parametrize("code", [400, 401, 404, 410, 422])
async def test_a_client_error_is_dead_at_once_with_its_status(
    store: Store, conn: Any, receiver: Receiver, code: int
) -> None:
    await failed_tasks(store, conn, receiver.url(f"/status/{code}"))
    await pass_once(dispatcher(store))
    [(status, attempts, last_code, error, _)] = await rows(conn)
    assert (status, attempts, last_code) == ("dead", 1, code)
    assert error.startswith(f"HTTP {code}")


async def test_retry_after_of_a_429_is_honoured(store: Store, conn: Any,
                                                receiver: Receiver) -> None:
    await failed_tasks(store, conn, receiver.url("/retry-after/90"))
    await pass_once(dispatcher(store, retry_base=1.0, retry_max=2.0))
    cur = await conn.execute(
        "SELECT status, last_status_code, extract(epoch FROM run_after - now())"
        " FROM taskd.notifications")
    status, code, wait = await cur.fetchone()
    assert (status, code) == ("pending", 429)
    assert 85 < wait <= 90


async def test_after_retry_for_it_is_dead(store: Store, conn: Any, receiver: Receiver) -> None:
    await failed_tasks(store, conn, receiver.url("/status/500"))
    await pass_once(dispatcher(store, retry_base=5.0, retry_max=5.0, retry_for=2.0))
    [(status, attempts, code, _, _)] = await rows(conn)
    assert (status, attempts, code) == ("dead", 1, 500)


async def test_without_a_secret_it_is_dead_unsent(store: Store, conn: Any,
                                                  receiver: Receiver) -> None:
    await failed_tasks(store, conn, receiver.url("/ok"))
    config = DispatcherConfig(executor_id="d1")
    await pass_once(Dispatcher(config, store, Metrics()))
    [(status, _, _, error, _)] = await rows(conn)
    assert status == "dead" and "no signing secret" in error
    assert receiver.received() == []


async def test_an_operator_redelivers_dead_ones(store: Store, conn: Any,
                                                receiver: Receiver) -> None:
    await failed_tasks(store, conn, receiver.url("/flaky/1/404"), 2)
    await pass_once(dispatcher(store))
    assert [r[0] for r in await rows(conn)] == ["dead", "dead"]
    overview = await notifications.notification_overview(store)
    assert (overview.undelivered, overview.dead) == (0, 2)
    assert await notifications.redeliver_notifications(store, ids=[1]) == [1]
    await pass_once(dispatcher(store))
    assert [r[:3] for r in await rows(conn)] == [("delivered", 1, 200), ("dead", 1, 404)]
    assert await notifications.redeliver_notifications(store) == [2]
    assert await notifications.redeliver_notifications(store) == []


async def test_two_dispatchers_never_deliver_one_notification_twice(
    store: Store, conn: Any, receiver: Receiver
) -> None:
    await failed_tasks(store, conn, receiver.url("/slow/0.05"), 60)
    one, two = dispatcher(store, "d1", batch_size=10), dispatcher(store, "d2", batch_size=10)
    async with one.client() as h1, two.client() as h2:
        async def drain(d: Dispatcher, http: httpx.AsyncClient) -> None:
            while await d.deliver_once(http):
                pass
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, one, h1)
            tg.start_soon(drain, two, h2)
    ids = receiver.ids()
    assert len(ids) == 60 and set(ids.values()) == {1}, [r for r in await rows(conn)
                                                        if r[0] != "delivered"]
    cur = await conn.execute("SELECT count(DISTINCT locked_by), count(*) FILTER"
                             " (WHERE status = 'delivered') FROM taskd.notifications")
    assert await cur.fetchone() == (0, 60)


async def test_a_result_for_a_lost_lease_is_not_written(store: Store, conn: Any,
                                                        receiver: Receiver) -> None:
    await failed_tasks(store, conn, receiver.url("/ok"))
    [first] = await notifications.claim_notifications(store, "slow", 1, LEASE)
    # Its lease ends; another dispatcher claims it and delivers.
    await conn.execute("UPDATE taskd.notifications SET run_after = now()")
    await pass_once(dispatcher(store, "fast"))
    written = await notifications.record_deliveries(store, "slow", [
        notifications.DeliveryResult(first.id, first.attempts, "dead", status_code=404)],
        retry_for=60.0)
    assert written == {}
    assert [r[:3] for r in await rows(conn)] == [("delivered", 2, 200)]


async def test_the_body_is_json_with_a_null_error_for_a_completed_task(
    store: Store, conn: Any, receiver: Receiver
) -> None:
    await migrations.migrate(conn, allow_http_private=True)
    task = await submit(store, 1, notify_url=receiver.url("/ok"), notify_on=["completed"])
    [c] = await store.claim_subtasks("standard", "e1", 1, LEASE)
    await store.record_outcomes("e1", [Outcome(c.id, c.attempt, "completed")])
    await pass_once(dispatcher(store))
    [got] = receiver.received()
    body = json.loads(got.body)
    assert body["type"] == "task.completed" and body["data"]["task"]["id"] == task
    assert body["data"]["task"]["error"] is None


async def test_metrics_count_deliveries_by_outcome_and_show_the_outbox(
    store: Store, conn: Any, receiver: Receiver
) -> None:
    await failed_tasks(store, conn, receiver.url("/ok"), 2)
    await failed_tasks(store, conn, receiver.url("/status/404"), 1)
    await failed_tasks(store, conn, receiver.url("/status/500"), 1)
    d = dispatcher(store, retry_base=60.0, retry_max=60.0)
    await pass_once(d)
    await d._refresh_gauges()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for metric in d.metrics.registry.collect() for s in metric.samples}
    outcome = "taskd_notification_deliveries_total"
    assert samples[(outcome, (("outcome", "delivered"),))] == 2
    assert samples[(outcome, (("outcome", "dead"),))] == 1
    assert samples[(outcome, (("outcome", "retried"),))] == 1
    assert samples[("taskd_notifications", (("status", "undelivered"),))] == 1
    assert samples[("taskd_notifications", (("status", "dead"),))] == 1
    assert samples[("taskd_notification_oldest_undelivered_seconds", ())] >= 0.0


async def test_given_a_wakeup_it_looks_for_due_notifications_only_when_woken(
    store: Store, conn: Any, receiver: Receiver
) -> None:
    """The daemon's poller looks for due notifications in its own statement and wakes the
    dispatcher, which then makes no statement of its own every poll_interval."""
    await failed_tasks(store, conn, receiver.url("/ok"))
    wakeup = Wakeup()
    config = DispatcherConfig(executor_id="d1", signing_key=KEY, poll_interval=0.05,
                              stats_interval=60.0)
    d = Dispatcher(config, store, Metrics(), wakeup=wakeup)
    store.signals.statements.arm()
    async with anyio.create_task_group() as tg:
        tg.start_soon(d.run)
        # At its start it looks once, and delivers what is due.
        await wait_until(lambda: len(receiver.received()) == 1, message="the first delivery")
        await failed_tasks(store, conn, receiver.url("/ok"))
        await anyio.sleep(10 * config.poll_interval)  # the window in which it must not look
        assert len(receiver.received()) == 1
        assert store.signals.statements.taken().count("claim_notifications") == 1
        wakeup.set()
        await wait_until(lambda: len(receiver.received()) == 2, message="delivery when woken")
        tg.cancel_scope.cancel()
