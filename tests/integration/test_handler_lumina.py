"""The lumina handler against the fake Lumina API (a real HTTP server on loopback)."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from typing import Any

import anyio
import pytest
from pydantic import SecretStr

from taskd.handlers import HandlerRegistry
from taskd.handlers.clients import HttpClients
from taskd.handlers.lumina import TRANSIENT_TRIES
from taskd.queue import maintenance
from taskd.queue.store import Store
from taskd.settings import QueueSettings, Settings
from taskd.testing import FakeLumina
from taskd.types import ClaimedSubtask, Outcome
from tests.factories import fetch_one, wait_until
from tests.fixtures.contexts import EXECUTOR_ID, Attempts, claim_one, submit_and_claim

pytestmark = pytest.mark.anyio

REGISTRY = HandlerRegistry.load(Settings(handlers={}), discovered=[])


def lumina_settings(api: FakeLumina | str, **options: Any) -> QueueSettings:
    base_url = api if isinstance(api, str) else api.url
    defaults: dict[str, Any] = {"polling_interval": 0.05, "max_polls": 100, "timeout": 10,
                                "retry_base": 0.1, "retry_max": 1}
    return QueueSettings(base_url=base_url, **{**defaults, **options})


@pytest.fixture
def attempts(store: Store, http: HttpClients) -> Attempts:
    return Attempts(store, http, REGISTRY)


async def run(attempts: Attempts, claimed: ClaimedSubtask, settings: QueueSettings) -> Outcome:
    """Run the attempt as a daemon worker does; the outcome it reported."""
    outcome = await attempts.run(claimed, settings)
    assert outcome is not None, "no outcome: the lease was lost"
    return outcome


def reference(claimed: ClaimedSubtask) -> str:
    return f"taskd-subtask-{claimed.id}"


async def test_a_job_is_submitted_once_checkpointed_polled_and_its_output_returned(
    store: Store, attempts: Attempts, conn: Any
) -> None:
    with FakeLumina(job_seconds=0.2) as api:
        claimed = await submit_and_claim(store, "lumina", {"prompt": "a cat"}, queue="lumina")
        outcome = await run(attempts, claimed, lumina_settings(api))
        stats = api.stats()
    assert outcome.verdict == "completed"
    assert outcome.result == {
        "job_id": "job-1", "image_url": "https://lumina.invalid/job-1.png",
        "input": {"prompt": "a cat"},
    }
    assert stats.submissions == {reference(claimed): 1}
    assert stats.polls >= 2  # 0.2 s job, polled every 0.05 s
    state = await fetch_one(conn, "SELECT state FROM taskd.subtasks WHERE id = %s", claimed.id)
    assert state == {"job_id": "job-1"}


async def test_a_rejected_input_fails_for_good_with_the_api_message(
    store: Store, attempts: Attempts
) -> None:
    with FakeLumina(job_seconds=0.1) as api:
        claimed = await submit_and_claim(store, "lumina", {"reject": "prompt is empty"},
                                         queue="lumina", max_attempts=5)
        outcome = await run(attempts, claimed, lumina_settings(api))
    assert outcome.verdict == "failed"
    assert outcome.error == (
        "LuminaInputRejected: lumina rejected the submission (422): prompt is empty"
    )


async def test_a_job_failed_for_its_input_fails_for_good(
    store: Store, attempts: Attempts
) -> None:
    with FakeLumina(job_seconds=0.05) as api:
        claimed = await submit_and_claim(store, "lumina", {"fail": "invalid_input"},
                                         queue="lumina")
        outcome = await run(attempts, claimed, lumina_settings(api))
    assert outcome.verdict == "failed"
    assert outcome.error == (
        "LuminaInputRejected: lumina job job-1 failed (invalid_input): job job-1 failed"
    )


async def test_a_failed_job_is_retried_with_a_new_submission(
    store: Store, attempts: Attempts, conn: Any
) -> None:
    with FakeLumina(job_seconds=0.05) as api:
        settings = lumina_settings(api)
        claimed = await submit_and_claim(store, "lumina", {"fail": "internal"}, queue="lumina")
        outcome = await run(attempts, claimed, settings)
        assert outcome.verdict == "retry"
        assert outcome.error == (
            "LuminaJobFailed: lumina job job-1 failed (internal): job job-1 failed"
        )
        # The ended job is forgotten, so the next attempt submits again.
        state = await fetch_one(
            conn, "SELECT state FROM taskd.subtasks WHERE id = %s", claimed.id
        )
        assert state == {"job_id": None, "ended_job_ids": ["job-1"]}
        await store.record_outcomes(EXECUTOR_ID, [outcome._replace(delay=0)])
        retried = await claim_one(store, "lumina")
        assert retried.state == state
        await run(attempts, retried, settings)
        assert api.stats().submissions == {reference(claimed): 2}


async def test_transient_5xx_are_retried_within_the_attempt(
    store: Store, attempts: Attempts
) -> None:
    # 15%: 4 failures in a row (TRANSIENT_TRIES) have a chance of 0.05% per request chain, so
    # the attempt itself never fails; at 30% concurrency made that 1 run in ~12 (seen in CI).
    with FakeLumina(job_seconds=0.1, transient_rate=0.15, seed=7) as api:
        await store.submit("lumina", "lumina", [{"n": i} for i in range(5)])
        claimed = await store.claim_subtasks("lumina", EXECUTOR_ID, 5, lease_timeout=60)
        settings = lumina_settings(api)
        async with anyio.create_task_group() as tg:
            for c in claimed:
                tg.start_soon(attempts.run, c, settings)
        stats = api.stats()
    outcomes = [attempts.outcome_of(c) for c in claimed]
    assert [o.verdict for o in outcomes if o] == ["completed"] * 5
    assert stats.transient_errors > 0
    assert sorted(stats.submissions.values()) == [1] * 5


async def test_polls_start_an_interval_apart_however_long_each_takes(
    store: Store, attempts: Attempts
) -> None:
    # Each answer takes as long as the interval: polls one interval after each answer would
    # be 0.2 s apart (5 in a 1 s job); on the submission's clock they are due at once (~10).
    with FakeLumina(job_seconds=1.0, latency=0.1) as api:
        claimed = await submit_and_claim(store, "lumina", {}, queue="lumina")
        outcome = await run(attempts, claimed, lumina_settings(api, polling_interval=0.1))
        stats = api.stats()
    assert outcome.verdict == "completed"
    assert stats.polls >= 8, stats.polls


async def test_polls_failing_past_the_in_request_retries_are_missed_polls_not_a_new_job(
    store: Store, attempts: Attempts
) -> None:
    # Ending the attempt would free the slot while the job still runs at the API.
    with FakeLumina(job_seconds=0.3) as api:
        claimed = await submit_and_claim(store, "lumina", {}, queue="lumina")
        outcomes: list[Outcome] = []

        async def outage() -> None:
            await wait_until(lambda: api.stats().jobs == 1)
            api.transient_rate = 1.0
            # Three polls' worth of requests, each poll retried TRANSIENT_TRIES times.
            try:
                await wait_until(lambda: api.stats().transient_errors >= 3 * TRANSIENT_TRIES)
            finally:
                api.transient_rate = 0.0

        async with anyio.create_task_group() as tg:
            tg.start_soon(outage)
            outcomes.append(await run(attempts, claimed, lumina_settings(api)))
        stats = api.stats()
    assert outcomes[0].verdict == "completed"
    assert stats.transient_errors >= 3 * TRANSIENT_TRIES
    assert stats.submissions == {reference(claimed): 1}


async def test_polls_exhausted_by_failing_polls_say_what_the_last_one_saw(
    store: Store, attempts: Attempts
) -> None:
    with FakeLumina(job_seconds=30) as api:
        claimed = await submit_and_claim(store, "lumina", {}, queue="lumina")
        async with anyio.create_task_group() as tg:
            async def outage() -> None:
                await wait_until(lambda: api.stats().jobs == 1)
                api.transient_rate = 1.0

            tg.start_soon(outage)
            outcome = await run(attempts, claimed, lumina_settings(api, max_polls=2))
        assert api.stats().submissions == {reference(claimed): 1}
    assert outcome.verdict == "retry"
    assert outcome.error is not None
    assert outcome.error.startswith(
        "LuminaPollsExhausted: lumina job job-1 did not end within 2 polls 0.05 s apart"
        " (the last poll failed: GET "
    ), outcome.error
    assert "returned 503" in outcome.error


async def test_an_unreachable_api_is_retried_then_failed_and_counted_by_type(
    store: Store, attempts: Attempts, conn: Any
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    settings = lumina_settings(url)
    claimed = await submit_and_claim(store, "lumina", {}, queue="lumina", max_attempts=2)
    first = await run(attempts, claimed, settings)
    assert first.verdict == "retry"
    assert first.failure is not None and first.failure.error_type == "LuminaUnreachable"
    # Each outcome's failure goes to error_logs with it.
    await store.record_outcomes(EXECUTOR_ID, [first._replace(delay=0)])
    last = await run(attempts, await claim_one(store, "lumina"), settings)
    assert last.verdict == "failed"
    assert last.error is not None
    assert last.error.startswith(
        f"LuminaUnreachable: POST {url}/v1/jobs got no answer ("
    ), last.error
    assert last.failure is not None
    await store.record_outcomes(EXECUTOR_ID, [last])
    assert await fetch_one(
        conn, "SELECT sum(count) FROM taskd.error_logs WHERE error_type = 'LuminaUnreachable'"
    ) == 2


async def test_a_request_that_outlasts_request_timeout_is_retried_as_unreachable(
    store: Store, attempts: Attempts
) -> None:
    with FakeLumina(job_seconds=30, latency=0.5) as api:
        claimed = await submit_and_claim(store, "lumina", {}, queue="lumina")
        outcome = await run(attempts, claimed, lumina_settings(api, request_timeout=0.05))
        stats = api.stats()
    assert outcome.verdict == "retry"
    assert outcome.error is not None
    assert outcome.error.startswith(
        f"LuminaUnreachable: POST {api.url}/v1/jobs got no answer (TimeoutError"
    ), outcome.error
    assert stats.requests == TRANSIENT_TRIES


async def test_polls_exhausted_retry_resumes_the_same_job(
    store: Store, attempts: Attempts
) -> None:
    with FakeLumina(job_seconds=0.5) as api:
        claimed = await submit_and_claim(store, "lumina", {}, queue="lumina")
        first = await run(attempts, claimed, lumina_settings(api, max_polls=2))
        assert first.verdict == "retry"
        assert first.error is not None
        assert first.error.startswith(
            "LuminaPollsExhausted: lumina job job-1 did not end within 2 polls"
        )
        await store.record_outcomes(EXECUTOR_ID, [first._replace(delay=0)])
        retried = await claim_one(store, "lumina")
        assert retried.state == {"job_id": "job-1"}
        second = await run(attempts, retried, lumina_settings(api, max_polls=100))
        assert second.verdict == "completed"
        assert second.result["job_id"] == "job-1"
        assert api.stats().submissions == {reference(claimed): 1}


async def test_an_executor_that_vanishes_mid_poll_is_resumed_without_a_second_submission(
    store: Store, attempts: Attempts
) -> None:
    with FakeLumina(job_seconds=0.6) as api:
        settings = lumina_settings(api)
        claimed = await submit_and_claim(store, "lumina", {}, queue="lumina")
        with anyio.CancelScope() as scope:  # the executor's whole task group, as it vanishes

            async def cancel_once_submitted() -> None:
                with anyio.fail_after(5):
                    while not api.stats().submissions:  # noqa: ASYNC110  (server thread)
                        await anyio.sleep(0.01)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_once_submitted)
                await run(attempts, claimed, settings)
        # Nobody completes the attempt; the rescuer takes the lease back once it expires.
        later = await store.database_now() + timedelta(seconds=90)
        rescued = await maintenance.rescue_expired_leases(store, now=later)
        assert [r["id"] for r in rescued] == [claimed.id]
        resumed = await claim_one(store, "lumina")
        # The vanished executor's attempt is given back; the checkpoint is kept.
        assert resumed.attempt == 1 and resumed.state == {"job_id": "job-1"}
        outcome = await run(attempts, resumed, settings)
        assert outcome.verdict == "completed"
        assert api.stats().submissions == {reference(claimed): 1}


async def test_the_api_key_is_sent_and_never_logged(
    store: Store, attempts: Attempts, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-very-secret-123"
    caplog.set_level(logging.DEBUG)
    with FakeLumina(job_seconds=0.05, api_key=secret) as api:
        settings = lumina_settings(api, api_key=SecretStr(secret))
        claimed = await submit_and_claim(store, "lumina", {}, queue="lumina")
        ok = await run(attempts, claimed, settings)
        wrong = await submit_and_claim(store, "lumina", {}, queue="lumina")
        refused = await run(attempts, wrong, lumina_settings(api, api_key=SecretStr("nope")))
    assert ok.verdict == "completed"
    assert refused.verdict == "failed"
    assert refused.error == (
        "LuminaInputRejected: lumina rejected the submission (401): missing or wrong API key"
    )
    assert secret not in caplog.text and "nope" not in caplog.text
    assert secret not in repr(settings)


async def test_a_queue_without_base_url_fails_saying_so(
    store: Store, attempts: Attempts
) -> None:
    claimed = await submit_and_claim(store, "lumina", {}, queue="lumina")
    outcome = await run(attempts, claimed, QueueSettings())
    assert outcome.verdict == "failed"
    assert outcome.error == (
        "PermanentError: queue 'lumina' sets no base_url for the lumina handler"
    )
