"""taskd.testing.run_handler: one attempt through the daemon's runner, without a database."""

from __future__ import annotations

import anyio
import pytest

from taskd.errors import ConfigError, RetryLater
from taskd.handlers.base import SubtaskContext
from taskd.settings import QueueSettings, Settings
from taskd.testing import CheckpointRecorder, run_handler
from taskd.types import JSON

pytestmark = pytest.mark.anyio

SETTINGS = Settings(handlers={}, queues={"standard": QueueSettings(
    initial=1, max=1, retry_base=2.0, retry_max=10.0, max_attempts=3, timeout=5.0)})


async def test_a_built_in_kind_completes_with_its_result() -> None:
    outcome = await run_handler("noop", {"a": [1, (2, 3)]}, settings=SETTINGS)
    assert outcome.completed and outcome.verdict == "completed"
    assert outcome.result == {"a": [1, [2, 3]]}  # as stored: JSON values
    assert outcome.error is None and outcome.checkpoints == [] and outcome.state is None


async def test_a_retryable_error_is_retried_with_backoff_until_the_last_attempt() -> None:
    first = await run_handler("fail", {"message": "boom"}, settings=SETTINGS)
    assert first.verdict == "retry"
    assert first.error == "RequestedFailure: boom" and first.error_type == "RequestedFailure"
    assert 2.0 <= first.delay <= 2.2  # retry_base * 2^0, plus up to 10% jitter
    second = await run_handler("fail", {"message": "boom"}, attempt=2, settings=SETTINGS)
    assert 4.0 <= second.delay <= 4.4
    last = await run_handler("fail", {"message": "boom"}, attempt=3, settings=SETTINGS)
    assert last.verdict == "failed"


async def test_permanent_errors_and_retry_later() -> None:
    permanent = await run_handler("fail", {"permanent": True, "message": "no"},
                                  settings=SETTINGS)
    assert (permanent.verdict, permanent.error_type) == ("failed", "PermanentError")
    later = await run_handler("fail", {"retry_later": 30}, settings=SETTINGS)
    assert (later.verdict, later.delay, later.error_type) == ("snooze", 30, "RetryLater")


async def test_a_function_is_run_as_it_is_and_its_checkpoints_are_recorded() -> None:
    async def resumable(ctx: SubtaskContext) -> JSON:
        if ctx.state is None:
            await ctx.checkpoint({"stage": "submitted", "job": ctx.payload["job"]})
            await ctx.checkpoint({"stage": "polling", "job": ctx.payload["job"]})
            raise RetryLater(5)
        return {"resumed_from": ctx.state["stage"], "attempt": ctx.attempt}

    first = await run_handler(resumable, {"job": 7}, settings=SETTINGS)
    assert first.verdict == "snooze"
    assert first.checkpoints == [{"stage": "submitted", "job": 7},
                                 {"stage": "polling", "job": 7}]
    assert first.state == {"stage": "polling", "job": 7}
    again = await run_handler(resumable, {"job": 7}, attempt=2, state=first.state,
                              settings=SETTINGS)
    assert again.result == {"resumed_from": "polling", "attempt": 2}
    assert again.checkpoints == [] and again.state == first.state


async def test_a_plain_function_runs_in_a_thread() -> None:
    def shout(ctx: SubtaskContext) -> JSON:
        return ctx.payload["text"].upper()

    assert (await run_handler(shout, {"text": "hi"}, settings=SETTINGS)).result == "HI"


async def test_a_lost_lease_gives_no_outcome() -> None:
    async def checkpoints(ctx: SubtaskContext) -> JSON:
        await ctx.checkpoint({"n": 1})
        return "never recorded"

    outcome = await run_handler(checkpoints, {}, settings=SETTINGS,
                                recorder=CheckpointRecorder(lease_lost=True))
    assert outcome.verdict is None and outcome.outcome is None and outcome.checkpoints == []


async def test_a_handler_past_its_timeout_is_cancelled_and_retried() -> None:
    cancelled = anyio.Event()

    async def hangs(ctx: SubtaskContext) -> JSON:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    with anyio.fail_after(10):
        outcome = await run_handler(hangs, {}, settings=SETTINGS, attempt_timeout=0.1)
    assert cancelled.is_set()
    assert (outcome.verdict, outcome.error_type) == ("retry", "HandlerTimeout")


async def test_a_result_that_is_not_json_fails_as_in_the_daemon() -> None:
    async def sets(ctx: SubtaskContext) -> JSON:
        return {1, 2}

    outcome = await run_handler(sets, {}, settings=SETTINGS)
    assert outcome.verdict == "failed" and outcome.error_type == "PermanentError"
    assert "not JSON-serialisable" in (outcome.error or "")


async def test_an_unknown_kind_is_a_config_error_naming_the_registered_kinds() -> None:
    with pytest.raises(ConfigError, match=r"no handler for kind 'resize'.*noop"):
        await run_handler("resize", {}, settings=SETTINGS)


async def test_a_kind_from_the_handlers_setting() -> None:
    settings = Settings(handlers={"dumps": "json:dumps"}, queues=SETTINGS.queues)
    outcome = await run_handler("dumps", {}, settings=settings)
    # json.dumps(ctx) fails: the error is the handler's, retried like any other.
    assert outcome.verdict == "retry" and outcome.error_type == "TypeError"

