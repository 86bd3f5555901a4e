"""run_subtask over real claimed subtasks: every outcome, timeouts, threads, JSON, cancellation."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import anyio
import pytest

from taskd.errors import HandlerTimeout
from taskd.executor.runner import run_subtask
from taskd.handlers import HandlerRegistry, SubtaskContext
from taskd.handlers.clients import HttpClients
from taskd.queue.store import Store
from taskd.settings import QueueSettings, Settings
from tests.factories import fetch_one
from tests.fixtures.contexts import EXECUTOR_ID, claim_one, context_for, submit_and_claim

pytestmark = pytest.mark.anyio

FAST = QueueSettings(timeout=5, retry_base=2, retry_max=100)


@pytest.fixture
def registry() -> HandlerRegistry:
    return HandlerRegistry.load(Settings(handlers={}), discovered=[])


@pytest.fixture
def limiter() -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(4)


async def run(
    registry: HandlerRegistry, ctx: SubtaskContext, limiter: anyio.CapacityLimiter
) -> Any:
    return await run_subtask(registry, ctx, thread_limiter=limiter)


async def test_noop_completes_with_its_payload_and_the_outcome_is_recorded(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter, conn: Any,
) -> None:
    ctx = await submit_and_claim(store, http, "noop", {"a": [1, 2]}, FAST)
    result = await run(registry, ctx, limiter)
    assert result.error is None
    assert result.outcome.outcome == "completed"
    assert result.outcome.result == {"a": [1, 2]}
    assert await store.record_outcomes(EXECUTOR_ID, [result.outcome]) == {ctx.id}
    status, stored = await fetch_one(
        conn, "SELECT status, result FROM taskd.subtasks WHERE id = %s", ctx.id
    )
    assert (status, stored) == ("completed", {"a": [1, 2]})


async def test_sleep_sleeps_and_rejects_a_bad_payload_for_good(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter,
) -> None:
    ctx = await submit_and_claim(store, http, "sleep", {"ms": 50}, FAST)
    result = await run(registry, ctx, limiter)
    assert result.outcome.outcome == "completed" and result.outcome.result == {"slept_ms": 50}
    assert result.duration >= 0.05
    ctx = await submit_and_claim(store, http, "sleep", {"ms": "soon"}, FAST)
    result = await run(registry, ctx, limiter)
    assert result.outcome.outcome == "failed"
    assert result.outcome.error == "PermanentError: payload 'ms' must be a number, got 'soon'"
    assert result.error is not None and result.error.error_type == "PermanentError"


async def test_an_error_retries_with_backoff_then_fails_on_the_last_attempt(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter, conn: Any,
) -> None:
    ctx = await submit_and_claim(store, http, "fail", {"message": "boom"}, FAST, max_attempts=2)
    first = await run(registry, ctx, limiter)
    assert first.outcome.outcome == "retry"
    assert first.outcome.error == "RequestedFailure: boom"
    # attempt 1: retry_base * 2^0 = 2 s, plus at most 10% jitter
    assert 2.0 <= first.outcome.delay <= 2.2
    assert first.error is not None
    assert (first.error.error_type, first.error.message) == ("RequestedFailure", "boom")
    assert first.error.queue == "standard" and first.error.kind == "fail"
    assert "RequestedFailure: boom" in (first.error.stack_trace or "")
    await store.record_outcomes(EXECUTOR_ID, [first.outcome._replace(delay=0)])
    await store.record_errors([first.error])

    ctx = context_for(store, await claim_one(store), http, FAST)
    assert ctx.attempt == 2
    last = await run(registry, ctx, limiter)
    assert last.outcome.outcome == "failed" and last.outcome.error == "RequestedFailure: boom"
    await store.record_errors([last.error])
    count = await fetch_one(
        conn, "SELECT count FROM taskd.error_logs WHERE error_type = 'RequestedFailure'"
    )
    assert count == 2


async def test_permanent_error_fails_on_the_first_attempt(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter,
) -> None:
    ctx = await submit_and_claim(
        store, http, "fail", {"message": "bad input", "permanent": True}, FAST, max_attempts=5
    )
    result = await run(registry, ctx, limiter)
    assert result.outcome.outcome == "failed"
    assert result.outcome.error == "PermanentError: bad input"


async def test_retry_later_with_a_delay_past_30_days_is_an_ordinary_error(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter,
) -> None:
    ctx = await submit_and_claim(store, http, "fail", {"retry_later": 1e300}, FAST)
    result = await run(registry, ctx, limiter)
    assert result.outcome.outcome == "retry"
    assert result.outcome.error == (
        "ValueError: RetryLater delay must be from 0 to 2.592e+06 seconds, got 1e+300"
    )
    # The batch it goes into is written: nothing unstorable reached the database.
    assert await store.record_outcomes(EXECUTOR_ID, [result.outcome]) == {ctx.id}


async def test_retry_later_snoozes_without_an_error_and_keeps_the_attempt(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter, conn: Any,
) -> None:
    ctx = await submit_and_claim(
        store, http, "fail", {"retry_later": 30, "message": "quota"}, FAST, max_attempts=1
    )
    result = await run(registry, ctx, limiter)
    assert result.outcome.outcome == "snooze" and result.outcome.delay == 30
    assert result.error is None
    await store.record_outcomes(EXECUTOR_ID, [result.outcome])
    row = await fetch_one(
        conn, "SELECT status, attempt, run_after > now() + interval '25 s' "
        "FROM taskd.subtasks WHERE id = %s", ctx.id,
    )
    assert row == ("pending", 0, True)


async def test_fail_until_attempt_succeeds_once_the_attempt_is_reached(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter,
) -> None:
    ctx = await submit_and_claim(store, http, "fail", {"until_attempt": 2}, FAST)
    first = await run(registry, ctx, limiter)
    assert first.outcome.outcome == "retry"
    await store.record_outcomes(EXECUTOR_ID, [first.outcome._replace(delay=0)])
    second = await run(registry, context_for(store, await claim_one(store), http, FAST), limiter)
    assert second.outcome.outcome == "completed" and second.outcome.result == {"attempt": 2}


async def test_unknown_kind_fails_naming_the_kind_and_the_registered_kinds(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter,
) -> None:
    ctx = await submit_and_claim(store, http, "resize", {}, FAST)
    result = await run(registry, ctx, limiter)
    assert result.outcome.outcome == "failed"
    assert result.outcome.error == (
        "PermanentError: no handler for kind 'resize'; "
        "registered kinds: fail, http, lumina, noop, sleep"
    )


async def returns_a_set(ctx: SubtaskContext) -> Any:
    return {1, 2}


async def returns_a_tuple(ctx: SubtaskContext) -> Any:
    return ("a", 1.5, None)


async def test_a_result_that_is_not_json_fails_for_good_saying_so(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter,
) -> None:
    registry.register("sets", returns_a_set, "settings", "tests:returns_a_set")
    registry.register("tuples", returns_a_tuple, "settings", "tests:returns_a_tuple")
    ctx = await submit_and_claim(store, http, "sets", {}, FAST, max_attempts=5)
    result = await run(registry, ctx, limiter)
    assert result.outcome.outcome == "failed"
    assert result.outcome.error.startswith(
        "PermanentError: the handler's result is not JSON-serialisable: "
    )
    assert "set" in result.outcome.error
    ctx = await submit_and_claim(store, http, "tuples", {}, FAST)
    result = await run(registry, ctx, limiter)
    assert result.outcome.result == ["a", 1.5, None]


async def sleeps_long(ctx: SubtaskContext) -> Any:
    if "started" in ctx.extras:
        ctx.extras["started"].set()
    await anyio.sleep(30)
    return "too late"


async def test_the_queue_timeout_ends_an_async_handler_with_a_retryable_timeout(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter,
) -> None:
    registry.register("slow", sleeps_long, "settings", "tests:sleeps_long")
    ctx = await submit_and_claim(store, http, "slow", {}, QueueSettings(timeout=0.2))
    started = time.monotonic()
    result = await run(registry, ctx, limiter)
    assert time.monotonic() - started < 2
    assert result.outcome.outcome == "retry"
    assert result.outcome.error == (
        "HandlerTimeout: slow handler ran longer than the queue's timeout of 0.2 s"
    )
    assert result.error is not None and result.error.error_type == HandlerTimeout.__name__


def blocking(ctx: SubtaskContext) -> Any:
    ctx.extras["thread"] = threading.get_ident()
    release: threading.Event = ctx.extras["release"]
    running: list[int] = ctx.extras["running"]
    running.append(1)
    ctx.extras["peak"].append(len(running))
    release.wait(10)
    running.pop()
    return {"thread": ctx.extras["thread"] != ctx.extras["loop_thread"]}


async def test_plain_functions_run_in_worker_threads_within_the_limiter(
    store: Store, http: HttpClients, registry: HandlerRegistry,
) -> None:
    registry.register("blocking", blocking, "settings", "tests:blocking")
    assert registry.get("blocking").is_async is False  # type: ignore[union-attr]
    await store.submit("standard", "blocking", [{}, {}, {}])
    claimed = await store.claim_subtasks("standard", EXECUTOR_ID, 3, lease_timeout=60)
    release, running, peak = threading.Event(), [], []  # type: ignore[var-annotated]
    limiter = anyio.CapacityLimiter(2)
    results: list[Any] = []
    contexts = [context_for(store, c, http, FAST) for c in claimed]
    for ctx in contexts:
        ctx.extras.update(release=release, running=running, peak=peak,
                          loop_thread=threading.get_ident())

    async def one(ctx: SubtaskContext) -> None:
        results.append(await run_subtask(registry, ctx, thread_limiter=limiter))

    async with anyio.create_task_group() as tg:
        for ctx in contexts:
            tg.start_soon(one, ctx)
        with anyio.fail_after(5):
            while len(peak) < 2:  # noqa: ASYNC110  (set from worker threads)
                await anyio.sleep(0.01)
        assert len(running) == 2  # the third waits for the limiter
        release.set()
    assert max(peak) == 2
    assert [r.outcome.result for r in results] == [{"thread": True}] * 3


def blocks_past_timeout(ctx: SubtaskContext) -> Any:
    ctx.extras["release"].wait(10)
    return None


async def test_a_thread_past_the_timeout_is_abandoned_and_retried(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter,
) -> None:
    registry.register("stuck", blocks_past_timeout, "settings", "tests:blocks_past_timeout")
    ctx = await submit_and_claim(store, http, "stuck", {}, QueueSettings(timeout=0.2))
    ctx.extras["release"] = release = threading.Event()
    started = time.monotonic()
    try:
        result = await run(registry, ctx, limiter)
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert result.outcome.outcome == "retry"
    assert result.outcome.error.startswith("HandlerTimeout: ")


async def checkpoints(ctx: SubtaskContext) -> Any:
    await ctx.checkpoint({"step": 1})
    return "unreachable when the lease is lost"


async def test_a_lost_lease_gives_no_outcome(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter,
) -> None:
    registry.register("checkpoints", checkpoints, "settings", "tests:checkpoints")
    ctx = await submit_and_claim(store, http, "checkpoints", {}, FAST)
    # The rescuer, a minute and a half on, takes the lease back.
    later = await store.database_now() + timedelta(seconds=90)
    rescued = await store.rescue_expired_leases(now=later)
    assert [r["id"] for r in rescued] == [ctx.id]
    result = await run(registry, ctx, limiter)
    assert result.outcome is None and result.error is None


async def test_a_stop_from_outside_ends_the_attempt_with_none(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter,
) -> None:
    """The daemon stops an attempt (shutdown, a cancelled task, a lost lease) by cancelling
    ctx.cancel_scope; there is no outcome, and the daemon decides what follows."""
    registry.register("slow", sleeps_long, "settings", "tests:sleeps_long")
    ctx = await submit_and_claim(store, http, "slow", {}, FAST)
    ctx.extras["started"] = started = anyio.Event()
    results: list[Any] = []

    async with anyio.create_task_group() as tg:
        tg.start_soon(_append, results, run(registry, ctx, limiter))
        with anyio.fail_after(5):
            await started.wait()
        ctx.cancel_scope.cancel()
    assert results == [None]
    assert ctx.cancel_scope.cancelled_caught


async def test_the_cancellation_of_an_enclosing_scope_propagates(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter,
) -> None:
    registry.register("slow", sleeps_long, "settings", "tests:sleeps_long")
    ctx = await submit_and_claim(store, http, "slow", {}, FAST)
    ctx.extras["started"] = started = anyio.Event()
    results: list[Any] = []

    async def daemon_side() -> None:
        with anyio.CancelScope() as outer:
            scopes.append(outer)
            results.append(await run(registry, ctx, limiter))

    scopes: list[anyio.CancelScope] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon_side)
        with anyio.fail_after(5):
            await started.wait()
        scopes[0].cancel()
    assert results == []
    assert scopes[0].cancelled_caught and not ctx.cancel_scope.cancelled_caught


async def _append(results: list[Any], attempt: Awaitable[Any]) -> None:
    results.append(await attempt)


async def test_an_error_with_nul_and_a_lone_surrogate_is_stored_not_fatal_to_its_batch(
    store: Store, http: HttpClients, registry: HandlerRegistry,
    limiter: anyio.CapacityLimiter, conn: Any,
) -> None:
    async def unstorable(ctx: SubtaskContext) -> None:
        raise ValueError("nul \x00 and half a pair \ud800")

    registry.register("unstorable", unstorable, "settings", "tests:unstorable")
    ctx = await submit_and_claim(store, http, "unstorable", {}, FAST)
    result = await run(registry, ctx, limiter)
    assert result.outcome is not None and result.error is not None
    assert await store.record_outcomes(EXECUTOR_ID, [result.outcome]) == {ctx.id}
    await store.record_errors([result.error])
    assert await fetch_one(conn, "SELECT error FROM taskd.subtasks WHERE id = %s", ctx.id) == (
        "ValueError: nul \ufffd and half a pair ?"
    )
    assert await fetch_one(conn, "SELECT error_message FROM taskd.error_logs") == (
        "nul \ufffd and half a pair ?"
    )
