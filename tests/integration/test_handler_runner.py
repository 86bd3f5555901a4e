"""Runner.run_one over real claimed subtasks: every outcome, timeouts, threads, JSON, stops."""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import timedelta
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from taskd.errors import HandlerTimeout
from taskd.executor.running import RunningSubtask, StopReason
from taskd.handlers import HandlerRegistry, SubtaskContext
from taskd.handlers.base import AsyncHandler
from taskd.handlers.clients import HttpClients
from taskd.queue import maintenance
from taskd.queue.store import Store
from taskd.settings import QueueSettings, Settings
from tests.factories import fetch_one
from tests.fixtures.contexts import EXECUTOR_ID, Attempts, claim_one, submit_and_claim

pytestmark = pytest.mark.anyio

FAST = QueueSettings(timeout=5, retry_base=2, retry_max=100)


@pytest.fixture
def registry() -> HandlerRegistry:
    return HandlerRegistry.load(Settings(handlers={}), discovered=[])


@pytest.fixture
def attempts(store: Store, http: HttpClients, registry: HandlerRegistry) -> Attempts:
    return Attempts(store, http, registry)


async def test_noop_completes_with_its_payload_and_the_outcome_is_recorded(
    store: Store, attempts: Attempts, conn: Any,
) -> None:
    claimed = await submit_and_claim(store, "noop", {"a": [1, 2]})
    outcome = await attempts.run(claimed, FAST)
    assert outcome is not None and outcome.failure is None
    assert outcome.verdict == "completed"
    assert outcome.result == {"a": [1, 2]}
    assert await store.record_outcomes(EXECUTOR_ID, [outcome]) == {claimed.id}
    status, stored = await fetch_one(
        conn, "SELECT status, result FROM taskd.subtasks WHERE id = %s", claimed.id
    )
    assert (status, stored) == ("completed", {"a": [1, 2]})


async def test_sleep_sleeps_and_rejects_a_bad_payload_for_good(
    store: Store, attempts: Attempts,
) -> None:
    outcome = await attempts.run(await submit_and_claim(store, "sleep", {"ms": 50}), FAST)
    assert outcome is not None
    assert outcome.verdict == "completed" and outcome.result == {"slept_ms": 50}
    count, total = attempts.durations()
    assert count == 1 and total >= 0.05
    outcome = await attempts.run(await submit_and_claim(store, "sleep", {"ms": "soon"}), FAST)
    assert outcome is not None and outcome.verdict == "failed"
    assert outcome.error == "PermanentError: payload 'ms' must be a number, got 'soon'"
    assert outcome.failure is not None and outcome.failure.error_type == "PermanentError"


async def test_an_error_retries_with_backoff_then_fails_on_the_last_attempt(
    store: Store, attempts: Attempts, conn: Any,
) -> None:
    claimed = await submit_and_claim(store, "fail", {"message": "boom"}, max_attempts=2)
    first = await attempts.run(claimed, FAST)
    assert first is not None and first.verdict == "retry"
    assert first.error == "RequestedFailure: boom"
    # attempt 1: retry_base * 2^0 = 2 s, plus at most 10% jitter
    assert 2.0 <= first.delay <= 2.2
    assert first.failure is not None
    assert (first.failure.error_type, first.failure.message) == ("RequestedFailure", "boom")
    assert first.failure.queue == "standard" and first.failure.kind == "fail"
    assert "RequestedFailure: boom" in (first.failure.stack_trace or "")
    # Its failure goes to error_logs with it.
    await store.record_outcomes(EXECUTOR_ID, [first._replace(delay=0)])

    claimed = await claim_one(store)
    assert claimed.attempt == 2
    last = await attempts.run(claimed, FAST)
    assert last is not None
    assert last.verdict == "failed" and last.error == "RequestedFailure: boom"
    await store.record_outcomes(EXECUTOR_ID, [last])
    count = await fetch_one(
        conn, "SELECT count FROM taskd.error_logs WHERE error_type = 'RequestedFailure'"
    )
    assert count == 2


async def test_permanent_error_fails_on_the_first_attempt(
    store: Store, attempts: Attempts,
) -> None:
    claimed = await submit_and_claim(
        store, "fail", {"message": "bad input", "permanent": True}, max_attempts=5
    )
    outcome = await attempts.run(claimed, FAST)
    assert outcome is not None and outcome.verdict == "failed"
    assert outcome.error == "PermanentError: bad input"


async def test_retry_later_with_a_delay_past_30_days_is_an_ordinary_error(
    store: Store, attempts: Attempts,
) -> None:
    claimed = await submit_and_claim(store, "fail", {"retry_later": 1e300})
    outcome = await attempts.run(claimed, FAST)
    assert outcome is not None and outcome.verdict == "retry"
    assert outcome.error == (
        "ValueError: RetryLater delay must be from 0 to 2.592e+06 seconds, got 1e+300"
    )
    # The batch it goes into is written: nothing unstorable reached the database.
    assert await store.record_outcomes(EXECUTOR_ID, [outcome]) == {claimed.id}


async def test_retry_later_snoozes_without_an_error_and_keeps_the_attempt(
    store: Store, attempts: Attempts, conn: Any,
) -> None:
    claimed = await submit_and_claim(
        store, "fail", {"retry_later": 30, "message": "quota"}, max_attempts=1
    )
    outcome = await attempts.run(claimed, FAST)
    assert outcome is not None and outcome.verdict == "snooze" and outcome.delay == 30
    assert outcome.failure is None
    await store.record_outcomes(EXECUTOR_ID, [outcome])
    row = await fetch_one(
        conn, "SELECT status, attempt, run_after > now() + interval '25 s' "
        "FROM taskd.subtasks WHERE id = %s", claimed.id,
    )
    assert row == ("pending", 0, True)


async def test_fail_until_attempt_succeeds_once_the_attempt_is_reached(
    store: Store, attempts: Attempts,
) -> None:
    first = await attempts.run(await submit_and_claim(store, "fail", {"until_attempt": 2}), FAST)
    assert first is not None and first.verdict == "retry"
    await store.record_outcomes(EXECUTOR_ID, [first._replace(delay=0)])
    second = await attempts.run(await claim_one(store), FAST)
    assert second is not None
    assert second.verdict == "completed" and second.result == {"attempt": 2}


async def test_unknown_kind_fails_naming_the_kind_and_the_registered_kinds(
    store: Store, attempts: Attempts,
) -> None:
    outcome = await attempts.run(await submit_and_claim(store, "resize", {}), FAST)
    assert outcome is not None and outcome.verdict == "failed"
    assert outcome.error == (
        "PermanentError: no handler for kind 'resize'; "
        "registered kinds: fail, http, lumina, noop, sleep"
    )


async def returns_a_set(ctx: SubtaskContext) -> Any:
    return {1, 2}


async def returns_a_tuple(ctx: SubtaskContext) -> Any:
    return ("a", 1.5, None)


async def test_a_result_that_is_not_json_fails_for_good_saying_so(
    store: Store, registry: HandlerRegistry, attempts: Attempts,
) -> None:
    registry.register("sets", returns_a_set, "settings", "tests:returns_a_set")
    registry.register("tuples", returns_a_tuple, "settings", "tests:returns_a_tuple")
    claimed = await submit_and_claim(store, "sets", {}, max_attempts=5)
    outcome = await attempts.run(claimed, FAST)
    assert outcome is not None and outcome.verdict == "failed"
    assert outcome.error is not None
    assert outcome.error.startswith(
        "PermanentError: the handler's result is not JSON-serialisable: "
    )
    assert "set" in outcome.error
    outcome = await attempts.run(await submit_and_claim(store, "tuples", {}), FAST)
    assert outcome is not None and outcome.result == ["a", 1.5, None]


class Started:
    """The contexts of the attempts a handler started, in order, for a test to wait on."""

    def __init__(self) -> None:
        self.contexts: list[SubtaskContext] = []
        self._changed = anyio.Event()

    def add(self, ctx: SubtaskContext) -> None:
        self.contexts.append(ctx)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self, count: int, within: float = 5) -> SubtaskContext:
        """The ``count``-th context, once that many attempts started."""
        with anyio.fail_after(within):
            while len(self.contexts) < count:
                await self._changed.wait()
        return self.contexts[count - 1]


def sleeps_long(started: Started) -> AsyncHandler:
    async def handle(ctx: SubtaskContext) -> Any:
        started.add(ctx)
        await anyio.sleep(30)
        return "too late"

    return handle


async def test_the_queue_timeout_ends_an_async_handler_with_a_retryable_timeout(
    store: Store, registry: HandlerRegistry, attempts: Attempts,
) -> None:
    registry.register("slow", sleeps_long(Started()), "settings", "tests:sleeps_long")
    claimed = await submit_and_claim(store, "slow", {})
    started = time.monotonic()
    outcome = await attempts.run(claimed, QueueSettings(timeout=0.2))
    assert time.monotonic() - started < 2
    assert outcome is not None and outcome.verdict == "retry"
    assert outcome.error == (
        "HandlerTimeout: slow handler ran longer than the queue's timeout of 0.2 s"
    )
    assert outcome.failure is not None and outcome.failure.error_type == HandlerTimeout.__name__


async def test_plain_functions_run_in_worker_threads_within_the_limiter(
    store: Store, http: HttpClients, registry: HandlerRegistry,
) -> None:
    release = threading.Event()
    running: list[int] = []
    peak: list[int] = []
    loop_thread = threading.get_ident()

    def blocking(ctx: SubtaskContext) -> Any:
        thread = threading.get_ident()
        running.append(1)
        peak.append(len(running))
        release.wait(10)
        running.pop()
        return {"thread": thread != loop_thread}

    registry.register("blocking", blocking, "settings", "tests:blocking")
    assert registry.get("blocking").is_async is False  # type: ignore[union-attr]
    await store.submit("standard", "blocking", [{}, {}, {}])
    claimed = await store.claim_subtasks("standard", EXECUTOR_ID, 3, lease_timeout=60)
    attempts = Attempts(store, http, registry, thread_limiter=anyio.CapacityLimiter(2))

    async with anyio.create_task_group() as tg:
        for subtask in claimed:
            tg.start_soon(attempts.run, subtask, FAST)
        with anyio.fail_after(5):
            while len(peak) < 2:  # noqa: ASYNC110  (set from worker threads)
                await anyio.sleep(0.01)
        assert len(running) == 2  # the third waits for the limiter
        release.set()
    assert max(peak) == 2
    outcomes = [attempts.outcome_of(subtask) for subtask in claimed]
    assert [o.result for o in outcomes if o is not None] == [{"thread": True}] * 3


async def test_a_thread_past_the_timeout_is_abandoned_and_retried(
    store: Store, registry: HandlerRegistry, attempts: Attempts,
) -> None:
    release = threading.Event()

    def blocks_past_timeout(ctx: SubtaskContext) -> Any:
        release.wait(10)
        return None

    registry.register("stuck", blocks_past_timeout, "settings", "tests:blocks_past_timeout")
    claimed = await submit_and_claim(store, "stuck", {})
    started = time.monotonic()
    try:
        outcome = await attempts.run(claimed, QueueSettings(timeout=0.2))
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert outcome is not None and outcome.verdict == "retry"
    assert outcome.error is not None and outcome.error.startswith("HandlerTimeout: ")


async def checkpoints(ctx: SubtaskContext) -> Any:
    await ctx.checkpoint({"step": 1})
    return "unreachable when the lease is lost"


async def test_a_lost_lease_gives_no_outcome(
    store: Store, registry: HandlerRegistry, attempts: Attempts,
) -> None:
    registry.register("checkpoints", checkpoints, "settings", "tests:checkpoints")
    claimed = await submit_and_claim(store, "checkpoints", {})
    # The rescuer, a minute and a half on, takes the lease back.
    later = await store.database_now() + timedelta(seconds=90)
    rescued = await maintenance.rescue_expired_leases(store, now=later)
    assert [r["id"] for r in rescued] == [claimed.id]
    assert await attempts.run(claimed, FAST) is None
    assert attempts.reported == []
    assert attempts.leases_lost() == 1


async def logs_twice(ctx: SubtaskContext) -> Any:
    ctx.logger.info("first")
    ctx.logger.warning("second")
    raise RuntimeError("after logging")


async def test_log_lines_of_a_handler_and_of_its_outcome_carry_the_subtask(
    store: Store, registry: HandlerRegistry, attempts: Attempts,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``ctx.logger`` is made on first use: the handler's own lines and the runner's line for
    the retry name the same subtask, task, queue and attempt, under taskd.handler.<kind>."""
    registry.register("logs_twice", logs_twice, "settings", "tests:logs_twice")
    claimed = await submit_and_claim(store, "logs_twice", {}, max_attempts=3)
    with caplog.at_level("INFO", logger="taskd.handler"):
        outcome = await attempts.run(claimed, FAST)
    assert outcome is not None and outcome.verdict == "retry"
    lines = [r for r in caplog.records if r.name == "taskd.handler.logs_twice"]
    assert [r.getMessage().split(" ")[0] for r in lines] == ["first", "second", "attempt"]
    for record in lines:
        assert (record.subtask_id, record.task_id, record.queue,  # type: ignore[attr-defined]
                record.attempt) == (claimed.id, claimed.task_id,  # type: ignore[attr-defined]
                                    claimed.queue, 1)


async def cancels_itself(ctx: SubtaskContext) -> Any:
    ctx.cancel_scope.cancel()
    await anyio.lowlevel.checkpoint()  # the cancellation lands here
    return {"unreachable": True}


async def test_a_handler_that_cancels_its_own_scope_fails_the_attempt_and_is_retried(
    store: Store, registry: HandlerRegistry, attempts: Attempts,
) -> None:
    # Neither a stop from outside nor a timeout: without an outcome, the subtask would stay
    # processing until its lease expired.
    registry.register("cancels_itself", cancels_itself, "settings", "tests:cancels_itself")
    claimed = await submit_and_claim(store, "cancels_itself", {})
    outcome = await attempts.run(claimed, FAST)
    assert outcome is not None and outcome.verdict == "retry"
    assert outcome.error == (
        "HandlerError: the cancels_itself handler cancelled its own cancel scope")
    assert outcome.failure is not None and outcome.failure.error_type == "HandlerError"


STOPS: list[StopReason] = ["shutdown", "cancelled", "lease_lost"]


async def test_a_stop_from_outside_ends_the_attempt_as_its_reason_says(
    store: Store, registry: HandlerRegistry, attempts: Attempts,
) -> None:
    """The daemon stops an attempt with RunningSubtask.stop(reason), which cancels the
    handler's scope: a shutdown leaves it in Runner.released to give back, a cancelled task
    reports a cancelled outcome, a lost lease is only counted."""
    started = Started()
    registry.register("slow", sleeps_long(started), "settings", "tests:sleeps_long")
    await store.submit("standard", "slow", [{}] * len(STOPS))
    runner = attempts.runner("standard", FAST)
    for n, reason in enumerate(STOPS, 1):
        claimed = await claim_one(store)
        # Given to the runner as the producer gives claimed subtasks to a worker.
        entry = RunningSubtask(claimed)
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(runner.run_ready, deque([entry]), more=lambda: None,
                                  done=lambda _: None))
            ctx = await started.wait(n)
            entry.stop(reason)
        assert ctx.id == claimed.id and ctx.cancel_scope.cancelled_caught
        outcome = attempts.outcome_of(claimed)
        if reason == "shutdown":
            assert outcome is None and runner.released == [(claimed.id, claimed.attempt)]
        elif reason == "cancelled":
            assert outcome is not None and outcome.verdict == "cancelled"
            assert outcome.error == "cancelled on request" and outcome.failure is None
        else:
            assert outcome is None and attempts.leases_lost() == 1
    assert len(runner.released) == 1 and len(attempts.reported) == 1
    assert attempts.durations() == (0, 0)  # no handler ran to an end


async def test_the_cancellation_of_an_enclosing_scope_propagates(
    store: Store, registry: HandlerRegistry, attempts: Attempts,
) -> None:
    started = Started()
    registry.register("slow", sleeps_long(started), "settings", "tests:sleeps_long")
    claimed = await submit_and_claim(store, "slow", {})
    results: list[Any] = []

    async def daemon_side() -> None:
        with anyio.CancelScope() as outer:
            scopes.append(outer)
            results.append(await attempts.run(claimed, FAST))

    scopes: list[anyio.CancelScope] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon_side)
        ctx = await started.wait(1)
        scopes[0].cancel()
    assert results == []
    assert scopes[0].cancelled_caught and not ctx.cancel_scope.cancelled_caught
    assert attempts.reported == [] and attempts.leases_lost() == 0


async def test_an_error_with_nul_and_a_lone_surrogate_is_stored_not_fatal_to_its_batch(
    store: Store, registry: HandlerRegistry, attempts: Attempts, conn: Any,
) -> None:
    async def unstorable(ctx: SubtaskContext) -> None:
        raise ValueError("nul \x00 and half a pair \ud800")

    registry.register("unstorable", unstorable, "settings", "tests:unstorable")
    claimed = await submit_and_claim(store, "unstorable", {})
    outcome = await attempts.run(claimed, FAST)
    assert outcome is not None and outcome.failure is not None
    # The failure goes to error_logs in the same statement as the outcome.
    assert await store.record_outcomes(EXECUTOR_ID, [outcome]) == {claimed.id}
    assert await fetch_one(
        conn, "SELECT error FROM taskd.subtasks WHERE id = %s", claimed.id
    ) == "ValueError: nul \ufffd and half a pair ?"
    assert await fetch_one(conn, "SELECT error_message FROM taskd.error_logs") == (
        "nul \ufffd and half a pair ?"
    )
