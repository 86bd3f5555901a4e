"""The handler contract: ``async def handle(ctx: SubtaskContext) -> JSON``.

A plain (non-async) function is run in a worker thread. Raise :class:`taskd.PermanentError` to
fail without retry, :class:`taskd.RetryLater` to retry after a delay without spending the
attempt; any other exception retries with exponential backoff until ``max_attempts``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

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


@dataclass(eq=False)
class SubtaskContext:
    """What a handler gets: the subtask, its queue's settings, and ways to report progress.

    ``http`` is an httpx client and ``session`` an aiohttp session, both shared by the daemon's
    handlers; aiohttp costs much less CPU per request than httpx (see
    :mod:`taskd.handlers.clients`), for handlers that make many small requests.
    """

    subtask: ClaimedSubtask
    queue_settings: QueueSettings
    logger: logging.LoggerAdapter[logging.Logger]
    http: httpx.AsyncClient
    session: aiohttp.ClientSession
    cancel_scope: anyio.CancelScope
    _checkpoint: Callable[[JSON], Awaitable[bool]]
    state: JSON | None = None
    # anyio's clock (anyio.current_time()): when the attempt times out and cancel_scope is
    # cancelled. The daemon's runner sets it to the claim's time plus the queue's timeout.
    deadline: float = math.inf

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
        if not await self._checkpoint(state):
            raise LeaseLost(f"subtask {self.id} attempt {self.attempt}: lease lost")
        self.state = state
