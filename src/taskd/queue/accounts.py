"""The HTTP API's database access: accounts, quota, and tasks as their owners see them.

:class:`ApiStore` wraps a :class:`taskd.queue.Store` and offers one typed method per API
operation. Operations that must be atomic (create with quota, retry with quota, account
updates) run as one transaction of named queries from ``queries/api.sql``.

Errors are :class:`taskd.errors.AccountError` and its kin (the tree in :mod:`taskd.errors`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row, tuple_row

from taskd.errors import (
    AccountError,
    AccountNotFound,
    IdempotencyConflict,
    NotAMember,
    NothingToRetry,
    QuotaExhausted,
    TaskFinished,
    TaskNotFound,
)
from taskd.queue.connection import Conn, run_query
from taskd.queue.store import Store
from taskd.queue.submission import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    prepare_submission,
    submitted,
)
from taskd.settings import DEFAULT_MAX_ATTEMPTS
from taskd.types import JSON, SubtaskStatus, Task

# One unit of quota per task, whatever its size: the product's unit is "a task request".
TASK_QUOTA_COST = 1
MAX_QUOTA = 2**31 - 1  # accounts.quota_remaining is an integer
# A user id: 1 to 200 characters, no control characters (a token's sub claim, a path segment).
USER_ID_PATTERN = r"^[^\x00-\x1f\x7f\ufffd]{1,200}$"
_USER_ID = re.compile(USER_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class NewTask:
    """What :meth:`ApiStore.create_task` should insert (already validated by the caller)."""

    user_id: str
    name: str
    kind: str
    queue: str
    priority: int
    params: dict[str, JSON]
    payloads: Sequence[dict[str, JSON]]
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    idempotency_key: str | None = None
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    traceparent: str | None = None
    unique_key: str | None = None
    unique_scope: str | None = None
    after: Sequence[int] | None = None
    notify_url: str | None = None
    notify_on: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class CreatedTask:
    task_id: int
    # True: the Idempotency-Key or the unique_key named an existing task; nothing was taken
    replayed: bool
    quota_remaining: int | None  # None on a replay
    detail: TaskDetail  # the task as it stood at the commit


@dataclass(frozen=True, slots=True)
class Account:
    user_id: str
    is_member: bool
    quota_remaining: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TaskDetail(Task):
    """A task as one reads it: its row, plus what its subtasks say."""

    batch_size: int
    processing: int
    results: list[JSON]
    error: str | None
    result_urls: list[str | None]


def _detail_params(task_id: int, results_limit: int = 100,
                   urls_limit: int = 1000) -> dict[str, int]:
    """``api_task_detail``'s parameters."""
    return {"id": task_id, "results_limit": results_limit, "urls_limit": urls_limit}


@dataclass(frozen=True, slots=True)
class SubtaskView:
    id: int
    status: SubtaskStatus
    payload: dict[str, JSON]
    result: JSON | None
    error: str | None
    attempt: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RetryReport:
    retried: int
    quota_taken: int


def _refused(user_id: str, cost: int, is_member: bool | None,
             quota_remaining: int | None) -> AccountError:
    """Why an account (None: no such account) cannot pay ``cost``."""
    if is_member is None:
        return AccountNotFound(f"user {user_id!r} not found")
    if not is_member:
        return NotAMember("please activate membership first")
    return QuotaExhausted(f"quota exhausted: {quota_remaining} left, {cost} needed")


class ApiStore:
    """The API's typed queries over a :class:`Store`'s pool."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- accounts -------------------------------------------------------------------------

    @staticmethod
    async def _take_quota(conn: Conn, user_id: str, cost: int) -> int:
        """Take ``cost`` units under the account's row lock; return what remains.

        Raises :class:`AccountNotFound`, :class:`NotAMember` or :class:`QuotaExhausted`.
        """
        taken = await run_query(conn, "api_take_quota", {"user_id": user_id, "cost": cost})
        if taken:
            return int(taken[0]["quota_remaining"])
        raise await ApiStore._refusal(conn, user_id, cost)

    @staticmethod
    async def _refusal(conn: Conn, user_id: str, cost: int) -> AccountError:
        """Why the account cannot pay ``cost``: :class:`AccountNotFound`, :class:`NotAMember`
        or :class:`QuotaExhausted`."""
        accounts = await run_query(conn, "api_get_account", {"user_id": user_id})
        if not accounts:
            return _refused(user_id, cost, None, None)
        return _refused(user_id, cost, accounts[0]["is_member"], accounts[0]["quota_remaining"])

    async def get_account(self, user_id: str) -> Account | None:
        rows = await self.store.fetch_as("api_get_account", {"user_id": user_id}, Account)
        return rows[0] if rows else None

    async def put_account(
        self, user_id: str, *, is_member: bool, quota_remaining: int
    ) -> tuple[Account, bool]:
        """Create or update an account; the quota change goes to the ledger as ``adjust``.

        Returns the account and whether it was created. Raises :class:`ValueError` for a quota
        outside 0..2^31-1 or a user id that breaks :data:`USER_ID_PATTERN`.
        """
        if not _USER_ID.match(user_id):
            raise ValueError(f"user id {user_id!r:.220} must be 1 to 200 characters without "
                             "control characters")
        if not 0 <= quota_remaining <= MAX_QUOTA:
            raise ValueError(f"quota_remaining {quota_remaining} is outside 0..{MAX_QUOTA}")

        async def work(conn: Conn) -> tuple[Account, bool]:
            created = bool(await run_query(conn, "api_ensure_account", {"user_id": user_id}))
            old = await run_query(conn, "api_lock_account", {"user_id": user_id})
            before = int(old[0]["quota_remaining"])
            [account] = await run_query(conn, "api_update_account", {
                "user_id": user_id, "is_member": is_member,
                "quota_remaining": quota_remaining,
            }, class_row(Account))
            if quota_remaining != before:
                await run_query(conn, "api_record_ledger", {
                    "user_id": user_id, "task_id": None,
                    "delta": quota_remaining - before, "reason": "adjust",
                })
            return account, created

        return await self.store.in_transaction(work)

    # -- tasks ----------------------------------------------------------------------------

    async def create_task(self, new: NewTask) -> CreatedTask:
        """Take one unit of quota and create the task and its subtasks, in one transaction;
        return it as it stands at the commit.

        With an idempotency key, a request that repeats an earlier one returns the earlier
        task and takes nothing. Raises :class:`taskd.errors.InvalidInput` (bad input),
        :class:`AccountError` subclasses and :class:`IdempotencyConflict`; nothing is written
        when any is raised.
        """
        query_name, values = prepare_submission(
            new.queue, new.kind, new.payloads, name=new.name, priority=new.priority,
            params=new.params, user_id=new.user_id, max_attempts=new.max_attempts, delay=0.0,
            max_payload_bytes=new.max_payload_bytes, traceparent=new.traceparent,
            unique_key=new.unique_key, unique_scope=new.unique_scope, after=new.after,
            notify_url=new.notify_url, notify_on=new.notify_on,
        )
        if new.idempotency_key is None and query_name == "submit_task_for_user":
            return await self._create_plain_task(new, values)

        async def work(conn: Conn) -> CreatedTask:
            task_id, remaining = await self._create_task_in(conn, new, query_name, values)
            [detail] = await run_query(conn, "api_task_detail", _detail_params(task_id),
                                       class_row(TaskDetail))
            return CreatedTask(task_id, replayed=remaining is None, quota_remaining=remaining,
                               detail=detail)

        return await self.store.in_transaction(work)

    async def _create_plain_task(self, new: NewTask, values: dict[str, Any]) -> CreatedTask:
        """The common create in one call (``api_create_task``, migration 0021): quota, task,
        mark, ledger and the task as it stands, in one round trip that is its own transaction
        (the pool's connections are autocommit), where the general path takes BEGIN, several
        statements and COMMIT (see docs/benchmarks.md)."""
        [row] = await self.store.fetch_as("api_create_task", {**values, "cost": TASK_QUOTA_COST},
                                          tuple, tuple_row)
        remaining, is_member = row[0], row[1]
        if row[2] is None:
            raise _refused(new.user_id, TASK_QUOTA_COST, is_member, remaining)
        detail = TaskDetail(*row[2:])
        return CreatedTask(detail.id, replayed=False, quota_remaining=remaining, detail=detail)

    async def _create_task_in(
        self, conn: Conn, new: NewTask, query_name: str, values: dict[str, Any]
    ) -> tuple[int, int | None]:
        """A create with an Idempotency-Key, a unique key or dependencies, on ``conn`` in its
        transaction: the task's id and the quota left (None: an earlier task, replayed)."""
        if new.idempotency_key is not None:
            earlier = await self._earlier_request(conn, new)
            if earlier is not None:
                return earlier, None
        if new.unique_key is not None:
            # The key first: a task that holds it is returned and no quota is taken; a new
            # one is paid for below, or rolled back with the transaction.
            made = submitted((await run_query(conn, query_name, values, tuple_row))[0])
            if made.existing:
                return made.task_id, None
            remaining = await self._take_quota(conn, new.user_id, TASK_QUOTA_COST)
            task_id = made.task_id
        else:
            remaining = await self._take_quota(conn, new.user_id, TASK_QUOTA_COST)
            rows = await run_query(conn, query_name, values)
            task_id = int(rows[0]["task_id"])
        await run_query(conn, "api_mark_api_task", {
            "id": task_id, "cost": TASK_QUOTA_COST, "key": new.idempotency_key,
        })
        await run_query(conn, "api_record_ledger", {
            "user_id": new.user_id, "task_id": task_id,
            "delta": -TASK_QUOTA_COST, "reason": "deduct",
        })
        return task_id, remaining

    async def _earlier_request(self, conn: Conn, new: NewTask) -> int | None:
        """The task this idempotency key already created, or None; waits for a racing twin."""
        key = {"user_id": new.user_id, "key": new.idempotency_key}
        await run_query(conn, "api_lock_idempotency_key", key)
        found = await run_query(conn, "api_find_idempotent_task", key)
        if not found:
            return None
        row = found[0]
        asked = (new.name, new.kind, new.queue, new.priority, new.params, len(new.payloads))
        stored = (row["name"], row["kind"], row["queue"], row["priority"], row["params"],
                  row["total"])
        if asked != stored:
            raise IdempotencyConflict(
                f"Idempotency-Key {new.idempotency_key!r} was already used for task "
                f"{row['id']}, created from a different request",
                task_id=int(row["id"]),
            )
        return int(row["id"])

    async def task_owner(self, task_id: int) -> str | None:
        """The task's user id (None for a task without one). Raises :class:`TaskNotFound`."""
        rows = await self.store.fetch_rows("api_task_owner", {"id": task_id})
        if not rows:
            raise TaskNotFound(f"task {task_id} not found")
        owner: str | None = rows[0]["user_id"]
        return owner

    async def task_detail(
        self, task_id: int, *, results_limit: int = 100, urls_limit: int = 1000
    ) -> TaskDetail:
        """The task with progress, its first results, its first subtasks' image URLs and its
        latest error.

        Raises :class:`TaskNotFound`.
        """
        rows = await self.store.fetch_as(
            "api_task_detail", _detail_params(task_id, results_limit, urls_limit), TaskDetail)
        if not rows:
            raise TaskNotFound(f"task {task_id} not found")
        return rows[0]

    async def list_tasks(
        self,
        user_id: str,
        *,
        status: str | None = None,
        kind: str | None = None,
        before_id: int | None = None,
        limit: int = 20,
    ) -> tuple[list[Task], int]:
        """The user's tasks, newest first, after the cursor; and how many match in all."""
        params = {"user_id": user_id, "status": status, "kind": kind,
                  "before_id": before_id, "limit": limit}
        tasks = await self.store.fetch_as("api_list_tasks", params, Task)
        total = await self.store.fetch_rows("api_count_tasks", params)
        return tasks, int(total[0]["total"])

    async def list_subtasks(
        self, task_id: int, *, status: str | None = None, after_id: int = 0, limit: int = 20
    ) -> tuple[list[SubtaskView], int]:
        """A page of the task's subtasks in id order; and how many match in all."""
        params = {"task_id": task_id, "status": status, "after_id": after_id, "limit": limit}
        subtasks = await self.store.fetch_as("api_list_subtasks", params, SubtaskView)
        total = await self.store.fetch_rows("api_count_subtasks", params)
        return subtasks, int(total[0]["total"])

    async def cancel_task(self, task_id: int) -> tuple[int, int]:
        """Cancel pending subtasks and ask running ones to stop: (cancelled, asked to stop).

        Raises :class:`TaskNotFound`, or :class:`TaskFinished` when the task has ended.
        """
        detail = await self.store.get_task(task_id)
        if detail is None:
            raise TaskNotFound(f"task {task_id} not found")
        if detail.status in ("completed", "failed", "cancelled"):
            raise TaskFinished(f"task {task_id} has already ended ({detail.status})",
                               status=detail.status)
        return await self.store.cancel_task(task_id)

    async def retry_task(self, task_id: int, *, charge_user: bool) -> RetryReport:
        """Put the task's failed subtasks back to pending.

        With ``charge_user``, a task none of whose charges is still held (each was refunded
        when it failed) takes one unit again, so a retried task never runs free; that charge
        is refunded in turn if the task fails again: at most one refund per charge.
        Raises :class:`TaskNotFound`, :class:`NothingToRetry` and :class:`AccountError`.
        """

        async def work(conn: Conn) -> RetryReport:
            rows = await run_query(conn, "api_lock_task", {"id": task_id})
            if not rows:
                raise TaskNotFound(f"task {task_id} not found")
            task = rows[0]
            if task["failed"] == 0:
                raise NothingToRetry(f"task {task_id} has no failed subtasks")
            owed = 0
            if charge_user and task["quota_cost"] > 0 and task["held_charges"] == 0:
                owed = TASK_QUOTA_COST
                await self._take_quota(conn, task["user_id"], owed)
                await run_query(conn, "api_add_task_quota_cost", {"id": task_id, "cost": owed})
                await run_query(conn, "api_record_ledger", {
                    "user_id": task["user_id"], "task_id": task_id,
                    "delta": -owed, "reason": "deduct",
                })
            retried = await run_query(conn, "retry_failed_subtasks", {"task_id": task_id})
            await run_query(conn, "api_notify_queue", {"queue": task["queue"]})
            return RetryReport(retried=len(retried), quota_taken=owed)

        return await self.store.in_transaction(work)

    # -- system status --------------------------------------------------------------------

    async def finished_in_window(self, window: float) -> tuple[int, int]:
        """Subtasks (completed, failed) in the last ``window`` seconds, by the database clock."""
        rows = await self.store.fetch_rows("api_processing_rate", {"window": window})
        return int(rows[0]["completed"]), int(rows[0]["failed"])

    async def database_info(self) -> dict[str, Any]:
        rows = await self.store.fetch_rows("api_database_info", {})
        return rows[0]
