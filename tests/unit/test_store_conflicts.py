"""A statement that a deadlock or serialization failure rolled back is tried again, up to five
tries in all; the first try runs without any retry machinery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from psycopg import errors as pgerrors

from taskd.queue.connection import CONFLICT_TRIES, retrying_conflicts

pytestmark = pytest.mark.anyio


def failing(times: int, exc: type[Exception], calls: list[int]) -> Callable[[], Awaitable[str]]:
    """A statement that fails with ``exc`` ``times`` times, then succeeds."""

    async def once() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc("conflict")
        return "done"

    return once


@pytest.mark.parametrize("exc", [pgerrors.DeadlockDetected, pgerrors.SerializationFailure,
                                 pgerrors.LockNotAvailable])
async def test_a_conflict_is_tried_again_until_it_succeeds(exc: type[Exception]) -> None:
    calls: list[int] = []
    assert await retrying_conflicts(failing(CONFLICT_TRIES - 1, exc, calls)) == "done"
    assert len(calls) == CONFLICT_TRIES


async def test_conflicts_past_the_last_try_raise_the_database_error() -> None:
    calls: list[int] = []
    with pytest.raises(pgerrors.DeadlockDetected):
        await retrying_conflicts(failing(CONFLICT_TRIES, pgerrors.DeadlockDetected, calls))
    assert len(calls) == CONFLICT_TRIES


async def test_other_errors_are_not_tried_again() -> None:
    calls: list[int] = []
    with pytest.raises(pgerrors.UniqueViolation):
        await retrying_conflicts(failing(1, pgerrors.UniqueViolation, calls))
    assert calls == [1]


async def test_a_first_success_runs_once() -> None:
    calls: list[int] = []
    assert await retrying_conflicts(failing(0, pgerrors.DeadlockDetected, calls)) == "done"
    assert calls == [1]
