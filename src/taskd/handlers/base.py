"""The handler contract: ``async def handle(ctx: SubtaskContext) -> JSON``.

A plain (non-async) function is run in a worker thread. Raise :class:`taskd.PermanentError` to
fail without retry, :class:`taskd.RetryLater` to retry after a delay without spending the
attempt; any other exception retries with exponential backoff until ``max_attempts``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import aiohttp
import anyio
import httpx

from taskd.errors import LeaseLost
from taskd.settings import QueueSettings
from taskd.types import JSON, ClaimedSubtask

AsyncHandler = Callable[["SubtaskContext"], Awaitable[JSON]]
SyncHandler = Callable[["SubtaskContext"], JSON]
Handler = AsyncHandler | SyncHandler
HandlerSource = Literal["builtin", "entry point", "settings"]


@dataclass(frozen=True, slots=True)
class RegisteredHandler:
    """A handler found for a kind, and where it came from (shown by ``taskd handlers``)."""

    kind: str
    fn: Handler
    source: HandlerSource
    origin: str  # "taskd.handlers.standard:noop", the entry point's distribution, ...
    is_async: bool


class CheckpointStore(Protocol):
    """Writes a subtask's checkpoint, fenced by its lease: the daemon's store, or
    :class:`taskd.testing.CheckpointRecorder` in a handler's unit test."""

    async def checkpoint(
        self, executor_id: str, subtask_id: int, attempt: int, state: JSON
    ) -> bool: ...


@dataclass(eq=False)
class SubtaskContext:
    """What a handler gets: the subtask, its queue's settings, and ways to report progress.

    ``http`` is an httpx client and ``session`` an aiohttp session, both shared by the daemon's
    handlers; aiohttp costs much less CPU per request than httpx (see
    :mod:`taskd.handlers.clients`), for handlers that make many small requests. ``logger``
    logs to ``log_to`` (``taskd.handler.<kind>``) with the subtask's id, task, queue and
    attempt; it is made on first use, as most subtasks log nothing (one is built per subtask).
    """

    subtask: ClaimedSubtask
    queue_settings: QueueSettings
    log_to: logging.Logger
    http: httpx.AsyncClient
    session: aiohttp.ClientSession
    cancel_scope: anyio.CancelScope
    _store: CheckpointStore
    _executor_id: str
    state: JSON | None = None
    # anyio's clock (anyio.current_time()): when the attempt times out and cancel_scope is
    # cancelled. The daemon's runner sets it to the claim's time plus the queue's timeout.
    deadline: float = math.inf
    _logger: logging.LoggerAdapter[logging.Logger] | None = field(
        default=None, init=False, repr=False)

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        logger = self._logger
        if logger is None:
            subtask = self.subtask
            logger = self._logger = logging.LoggerAdapter(
                self.log_to,
                {"subtask_id": subtask.id, "task_id": subtask.task_id, "queue": subtask.queue,
                 "attempt": subtask.attempt},
            )
        return logger

    @property
    def id(self) -> int:
        return self.subtask.id

    @property
    def task_id(self) -> int:
        return self.subtask.task_id

    @property
    def queue(self) -> str:
        return self.subtask.queue

    @property
    def kind(self) -> str:
        return self.subtask.kind

    @property
    def payload(self) -> dict[str, JSON]:
        return self.subtask.payload

    @property
    def attempt(self) -> int:
        return self.subtask.attempt

    @property
    def max_attempts(self) -> int:
        return self.subtask.max_attempts

    async def checkpoint(self, state: JSON) -> None:
        """Persist ``state`` on the subtask; the next attempt finds it in ``ctx.state``.

        Raises :class:`taskd.errors.LeaseLost` when this executor no longer holds the lease.
        """
        subtask = self.subtask
        if not await self._store.checkpoint(self._executor_id, subtask.id, subtask.attempt,
                                            state):
            raise LeaseLost(f"subtask {self.id} attempt {self.attempt}: lease lost")
        self.state = state
