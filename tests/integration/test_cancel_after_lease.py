"""A subtask whose task was cancelled while it ran must end cancelled, whatever happens to its
lease: found by the model-based test (tests/integration/test_model.py).

Before the fix, a cancel-requested subtask whose executor died was rescued back to ``pending``
(and one whose handler failed first went back through a ``retry`` or ``snooze`` outcome), so it
was claimed and run again after the user had cancelled it, and the task could end
``completed`` instead of ``cancelled``.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from taskd.queue import Outcome, Store, maintenance
from tests.factories import submit

pytestmark = pytest.mark.anyio

LEASE = 30.0


async def _claimed_then_cancelled(store: Store) -> tuple[int, int]:
    task_id = await submit(store, 1)
    [claimed] = await store.claim_subtasks("standard", "e1", 1, LEASE)
    assert await store.cancel_task(task_id) == (0, 1)
    return task_id, claimed.id


async def test_cancel_requested_subtask_whose_lease_expires_ends_cancelled(
    store: Store,
) -> None:
    task_id, subtask_id = await _claimed_then_cancelled(store)
    later = await store.database_now() + timedelta(seconds=LEASE + 1)
    rescued = await maintenance.rescue_expired_leases(store, now=later)
    assert [(r["id"], r["status"]) for r in rescued] == [(subtask_id, "cancelled")]
    assert await store.claim_subtasks("standard", "e2", 10, LEASE, now=later) == []
    task = await store.get_task(task_id)
    assert task is not None
    assert (task.status, task.cancelled) == ("cancelled", 1)


@pytest.mark.parametrize("outcome", ["retry", "snooze"])
async def test_cancel_requested_subtask_that_asks_for_a_retry_ends_cancelled(
    store: Store, outcome: str
) -> None:
    task_id, subtask_id = await _claimed_then_cancelled(store)
    applied = await store.record_outcomes(
        "e1", [Outcome(subtask_id, 1, outcome, error="boom", delay=0.0)]  # type: ignore[arg-type]
    )
    assert applied == {subtask_id}
    later = await store.database_now() + timedelta(seconds=5)
    assert await store.claim_subtasks("standard", "e2", 10, LEASE, now=later) == []
    [row] = await store.list_subtasks(task_id)
    assert (row.status, row.locked_by) == ("cancelled", None)
    task = await store.get_task(task_id)
    assert task is not None
    assert (task.status, task.cancelled) == ("cancelled", 1)


async def test_cancel_requested_subtask_given_back_on_shutdown_ends_cancelled(
    store: Store,
) -> None:
    task_id, subtask_id = await _claimed_then_cancelled(store)
    assert await store.release_subtasks("e1", [(subtask_id, 1)]) == {subtask_id}
    assert await store.claim_subtasks("standard", "e2", 10, LEASE) == []
    task = await store.get_task(task_id)
    assert task is not None
    assert (task.status, task.cancelled) == ("cancelled", 1)
