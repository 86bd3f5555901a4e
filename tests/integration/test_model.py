"""The queue core against a simple Python model of the contract, with hypothesis's stateful
testing on the real database.

Random sequences of submit, claim (three executors), outcomes (completed, failed, retry,
snooze, cancelled — from the lease holder or from a stale one), heartbeats, moving the
database-time parameter past leases, rescue, cancel and retry of tasks. After every step the
subtasks (status, attempt, locked_by, lease, run_after, cancel_requested) and the tasks
(counters and status) must equal the model's.

Time: every query that takes ``now`` gets the model's clock, which starts an hour ahead of the
database's, so that what ``submit`` stamps with the real ``now()`` is always in its past.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import psycopg
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from taskd.queue import Outcome, Store, maintenance

EXECUTORS = ("e1", "e2", "e3")
LEASE = 30.0
FINAL = ("completed", "failed", "cancelled")

# run_after as an ordered key: (0, n) for rows stamped with the real now() (the n-th such
# statement: they come in time order, all before the model's clock starts), (1, seconds) for
# rows stamped with the model's clock.
RunAfter = tuple[int, float]


@dataclass
class SubtaskModel:
    id: int
    task_id: int
    priority: int
    max_attempts: int
    run_after: RunAfter
    status: str = "pending"
    attempt: int = 0
    locked_by: str | None = None
    lease_expires: float | None = None  # seconds on the model's clock
    cancel_requested: bool = False
    crashes: int = 0


@dataclass
class TaskModel:
    id: int
    subtask_ids: list[int]
    status: str = "pending"


@dataclass
class Model:
    now: float = 0.0
    subtasks: dict[int, SubtaskModel] = field(default_factory=dict)
    tasks: dict[int, TaskModel] = field(default_factory=dict)
    real_stamps: Iterator[int] = field(default_factory=itertools.count)

    def counts(self, task: TaskModel) -> dict[str, int]:
        statuses = [self.subtasks[i].status for i in task.subtask_ids]
        return {s: statuses.count(s) for s in FINAL}

    def changed(self, before: dict[int, str]) -> None:
        """Task status after a statement that moved subtasks from the ``before`` statuses:
        pending until a subtask starts, processing while any is unfinished, then failed (any
        failed), cancelled (any cancelled) or completed."""
        for task_id in {self.subtasks[i].task_id for i in before}:
            task = self.tasks[task_id]
            counts = self.counts(task)
            started = any(
                self.subtasks[i].status != old
                and (self.subtasks[i].status == "processing" or self.subtasks[i].status in FINAL
                     or old in FINAL)
                for i, old in before.items() if self.subtasks[i].task_id == task_id
            )
            if sum(counts.values()) == len(task.subtask_ids):
                task.status = ("failed" if counts["failed"] else
                               "cancelled" if counts["cancelled"] else "completed")
            elif started:
                task.status = "processing"


class QueueMachine(RuleBasedStateMachine):
    """One example: a fresh set of rows, a model, and the steps hypothesis chooses."""

    def __init__(self, portal: BlockingPortal, store: Store, url: str) -> None:
        super().__init__()
        self.portal = portal
        self.store = store
        self.url = url
        self.model = Model()
        # Every lease ever handed out, current or stale: outcomes may come from any of them.
        self.grants: list[tuple[int, str, int]] = []
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE taskd.tasks, taskd.subtasks RESTART IDENTITY")
            row = conn.execute("SELECT now() + interval '1 hour'").fetchone()
        assert row is not None
        self.epoch: datetime = row[0]

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.portal.call(partial(fn, *args, **kwargs))

    def at(self, seconds: float) -> datetime:
        return self.epoch + timedelta(seconds=seconds)

    def stamp(self) -> RunAfter:
        return (0, float(next(self.model.real_stamps)))

    # -- rules ---------------------------------------------------------------------------------

    @initialize(tasks=st.lists(st.tuples(st.integers(1, 3), st.integers(-1, 1),
                                         st.integers(1, 3)), min_size=1, max_size=3))
    def some_work(self, tasks: list[tuple[int, int, int]]) -> None:
        """Start with work queued, so that short programs reach leases and rescues too."""
        for count, priority, max_attempts in tasks:
            self.submit(count, priority, max_attempts)

    @initialize(executor=st.sampled_from(EXECUTORS), limit=st.integers(0, 3))
    def some_claimed(self, executor: str, limit: int) -> None:
        if limit:
            self.claim(executor, limit)

    @rule(count=st.integers(1, 3), priority=st.integers(-1, 1), max_attempts=st.integers(1, 3))
    def submit(self, count: int, priority: int, max_attempts: int) -> None:
        task_id = self.call(self.store.submit, "standard", "noop",
                            [{"n": i} for i in range(count)], priority=priority,
                            max_attempts=max_attempts)
        ids = [s.id for s in self.call(self.store.list_subtasks, task_id)]
        assert len(ids) == count
        run_after = self.stamp()
        self.model.tasks[task_id] = TaskModel(task_id, ids)
        for sid in ids:
            self.model.subtasks[sid] = SubtaskModel(sid, task_id, priority, max_attempts,
                                                    run_after)

    @rule(executor=st.sampled_from(EXECUTORS), limit=st.integers(1, 3))
    def claim(self, executor: str, limit: int) -> None:
        claimed = self.call(self.store.claim_subtasks, "standard", executor, limit, LEASE,
                            now=self.at(self.model.now))
        ready = self.ready(suspects=False)[:limit]
        assert [c.id for c in claimed] == [s.id for s in ready]
        self.grant(executor, ready)
        assert [c.attempt for c in claimed] == [s.attempt for s in ready]

    @rule(executor=st.sampled_from(EXECUTORS))
    def claim_suspect(self, executor: str) -> None:
        """The quarantine's claim: one subtask in two crashes, run alone."""
        claimed = self.call(self.store.claim_suspect, executor, ["standard"], LEASE,
                            now=self.at(self.model.now))
        ready = self.ready(suspects=True)[:1]
        assert ([claimed.id] if claimed else []) == [s.id for s in ready]
        self.grant(executor, ready)

    def ready(self, *, suspects: bool) -> list[SubtaskModel]:
        suspect_after = maintenance.DEFAULT_POISON_AFTER - 1
        return sorted(
            (s for s in self.model.subtasks.values()
             if s.status == "pending" and s.run_after <= (1, self.model.now)
             and (s.crashes >= suspect_after) == suspects),
            key=lambda s: (-s.priority, s.run_after, s.id),
        )

    def grant(self, executor: str, ready: list[SubtaskModel]) -> None:
        before = {s.id: s.status for s in ready}
        for s in ready:
            s.status, s.locked_by, s.attempt = "processing", executor, s.attempt + 1
            s.lease_expires = self.model.now + LEASE
            self.grants.append((s.id, executor, s.attempt))
        self.model.changed(before)

    @precondition(lambda self: self.grants)
    @rule(data=st.data(),
          outcome=st.sampled_from(["completed", "failed", "retry", "snooze", "cancelled"]),
          delay=st.sampled_from([0.0, 1.0, 10.0]))
    def record_outcome(self, data: st.DataObject, outcome: Any, delay: float) -> None:
        sid, executor, attempt = data.draw(st.sampled_from(self.grants), label="grant")
        applied = self.call(
            self.store.record_outcomes, executor,
            [Outcome(sid, attempt, outcome, result_json='{"ok": true}' if outcome == "completed"
                     else None, error=None if outcome == "completed" else "boom",
                     delay=delay)],
            now=self.at(self.model.now),
        )
        s = self.model.subtasks[sid]
        holds = s.status == "processing" and s.locked_by == executor and s.attempt == attempt
        assert applied == ({sid} if holds else set()), (s, executor, attempt)
        if not holds:
            return
        before = {sid: s.status}
        s.locked_by = s.lease_expires = None
        if outcome in ("retry", "snooze"):
            # A retry of a subtask whose task was cancelled meanwhile ends it.
            s.status = "cancelled" if s.cancel_requested else "pending"
            s.run_after = (1, self.model.now + delay)
            s.attempt -= outcome == "snooze"
        else:
            s.status = outcome
        self.model.changed(before)

    @rule(executor=st.sampled_from(EXECUTORS))
    def heartbeat(self, executor: str) -> None:
        asked = sorted({sid for sid, e, _ in self.grants if e == executor})
        held = self.call(self.store.extend_leases, executor, asked, LEASE,
                         now=self.at(self.model.now))
        expected = {sid for sid in asked
                    if self.model.subtasks[sid].status == "processing"
                    and self.model.subtasks[sid].locked_by == executor}
        assert held == expected
        for sid in expected:
            self.model.subtasks[sid].lease_expires = self.model.now + LEASE

    @rule(seconds=st.sampled_from([1.0, 5.0, 29.0, 31.0, 61.0]))
    def advance_time(self, seconds: float) -> None:
        self.model.now += seconds

    @rule()
    def expire_leases_and_rescue(self) -> None:
        """The common case, made likely: time passes beyond a lease, then the rescuer runs."""
        self.advance_time(LEASE + 1)
        self.rescue()

    @rule()
    def rescue(self) -> None:
        rows = self.call(maintenance.rescue_expired_leases, self.store,
                         now=self.at(self.model.now))
        expired = [s for s in self.model.subtasks.values()
                   if s.status == "processing" and s.lease_expires is not None
                   and s.lease_expires < self.model.now]
        before = {s.id: s.status for s in expired}
        for s in expired:
            # A crash gives the attempt back; the third makes it a poison pill.
            s.crashes += 1
            s.status = ("cancelled" if s.cancel_requested else
                        "failed" if s.crashes >= maintenance.DEFAULT_POISON_AFTER else "pending")
            s.attempt -= s.status == "pending"
            s.locked_by = s.lease_expires = None
        assert sorted((r["id"], r["status"]) for r in rows) == sorted(
            (s.id, s.status) for s in expired)
        self.model.changed(before)

    @precondition(lambda self: self.model.tasks)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.model.tasks)), label="task")
        cancelled, requested = self.call(self.store.cancel_task, task_id)
        task = self.model.tasks[task_id]
        subtasks = [self.model.subtasks[i] for i in task.subtask_ids]
        pending = [s for s in subtasks if s.status == "pending"]
        asked = [s for s in subtasks if s.status == "processing" and not s.cancel_requested]
        assert (cancelled, requested) == (len(pending), len(asked))
        before = {s.id: s.status for s in pending}
        for s in pending:
            s.status = "cancelled"
        for s in asked:
            s.cancel_requested = True
        self.model.changed(before)

    @precondition(lambda self: self.model.tasks)
    @rule(data=st.data())
    def retry_task(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.model.tasks)), label="task")
        retried = self.call(self.store.retry_task, task_id)
        failed = [self.model.subtasks[i] for i in self.model.tasks[task_id].subtask_ids
                  if self.model.subtasks[i].status == "failed"]
        assert retried == len(failed)
        before = {s.id: s.status for s in failed}
        run_after = self.stamp()
        for s in failed:
            s.status, s.attempt, s.run_after, s.cancel_requested, s.crashes = (
                "pending", 0, run_after, False, 0)
        self.model.changed(before)

    # -- the check after every step --------------------------------------------------------------

    @invariant()
    def database_equals_model(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            subtasks = conn.execute("""
                SELECT id, status, attempt, locked_by, lease_expires_at, run_after,
                       cancel_requested
                  FROM taskd.subtasks ORDER BY id""").fetchall()
            tasks = conn.execute("""
                SELECT id, status, total, completed, failed, cancelled, completed_at IS NOT NULL
                  FROM taskd.tasks ORDER BY id""").fetchall()
        expected = []
        for s in sorted(self.model.subtasks.values(), key=lambda s: s.id):
            lease = None if s.lease_expires is None else self.at(s.lease_expires)
            expected.append((s.id, s.status, s.attempt, s.locked_by, lease, s.cancel_requested))
        actual = [(i, status, attempt, locked_by, lease, cancel)
                  for i, status, attempt, locked_by, lease, _, cancel in subtasks]
        assert actual == expected
        for (i, *_), s in zip(subtasks, sorted(self.model.subtasks.values(),
                                               key=lambda s: s.id), strict=True):
            run_after = subtasks[[r[0] for r in subtasks].index(i)][5]
            if s.run_after[0] == 1:
                assert run_after == self.at(s.run_after[1]), (i, run_after)
            else:
                assert run_after < self.epoch, (i, run_after)
        expected_tasks = []
        for t in sorted(self.model.tasks.values(), key=lambda t: t.id):
            counts = self.model.counts(t)
            expected_tasks.append((t.id, t.status, len(t.subtask_ids), counts["completed"],
                                   counts["failed"], counts["cancelled"], t.status in FINAL))
        assert tasks == expected_tasks


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal(backend="asyncio") as portal:
        yield portal


def test_queue_core_follows_the_model(database_url: str, portal: BlockingPortal) -> None:
    store: Store = portal.call(partial(Store.open, database_url, max_size=2))
    try:
        run_state_machine_as_test(
            lambda: QueueMachine(portal, store, database_url),
            settings=settings(max_examples=100, stateful_step_count=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow]),
        )
    finally:
        portal.call(store.close)
