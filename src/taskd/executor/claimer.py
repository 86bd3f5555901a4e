"""The claimer: the claims of the executor's producers, several queues in one statement.

A claim's fixed cost (round trip, plan, commit: about 1.5 ms of PostgreSQL) is paid per
statement. A queue with few slots claims few rows at a time, so with many such queues the
fixed cost was spread over few rows: 50 queues of 40 slots drained at 0.28-0.51 times one queue of
2,000 (docs/steady-state.md, "Many queues"). Producers hand their claims to the claimer
instead; it runs one statement at a time, and every claim that arrived while one ran goes into
the next together (``Store.claim_subtasks_of_queues``: each queue its own limit and resume
point). Alone, a claim runs as ``Store.claim_subtasks``, the single queue's statement, at once.
Queues with a rate limit or a ``cluster_max`` claim on their own (their statements count or
lock per queue), and so does a claim on the listening connection just after a notification.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio

from taskd.errors import ConfigError, DatabaseError
from taskd.executor.condition import Condition
from taskd.queue.store import DEFAULT_POISON_AFTER, QueueClaim, Store
from taskd.settings import Settings
from taskd.testsignals import TestSignal
from taskd.types import ClaimedSubtask

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClaimerConfig:
    """``lease_timeout``: the lease claimed subtasks are taken under. ``poison_after``: the
    rescuer's threshold (the claim skips suspects). Raises :class:`ConfigError` for a
    lease_timeout <= 0."""

    lease_timeout: float
    poison_after: int = DEFAULT_POISON_AFTER

    def __post_init__(self) -> None:
        if not self.lease_timeout > 0:
            raise ConfigError("claimer: lease_timeout must be > 0 seconds")

    @classmethod
    def from_settings(cls, settings: Settings) -> ClaimerConfig:
        return cls(settings.lease_timeout, settings.poison_after)


@dataclass
class ClaimerSignals:
    """What tests may wait for: how many queues each statement claimed for."""

    statement: TestSignal[int] = field(default_factory=TestSignal)


class _Request:
    __slots__ = ("claim", "done", "error", "rows")

    def __init__(self, claim: QueueClaim) -> None:
        self.claim = claim
        self.done = anyio.Event()
        self.rows: list[ClaimedSubtask] = []
        self.error: DatabaseError | None = None


class Claimer:
    def __init__(self, config: ClaimerConfig, store: Store, executor_id: str) -> None:
        self.config = config
        self.store = store
        self.executor_id = executor_id
        self.signals = ClaimerSignals()
        self._waiting: list[_Request] = []
        self._added = Condition()

    async def claim(
        self, queue: str, want: int, after: ClaimedSubtask | None = None,
    ) -> list[ClaimedSubtask]:
        """Claim up to ``want`` subtasks of ``queue`` (after ``after``, as
        ``Store.claim_subtasks``), with the claims of other queues waiting at the same time.
        Raises :class:`DatabaseError` when the statement fails. The caller shields the wait:
        the rows of a statement that ran are claimed whether or not anyone waits for them."""
        request = _Request(QueueClaim(queue, want, after))
        self._waiting.append(request)
        self._added.notify()
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.rows

    async def run(self) -> None:
        while True:
            while not self._waiting:
                await self._added.wait()
            batch, self._waiting = self._waiting, []
            # Shielded: a statement cut off mid-flight could commit and lose its rows.
            with anyio.CancelScope(shield=True):
                await self._claim_for(batch)

    async def _claim_for(self, batch: list[_Request]) -> None:
        config = self.config
        try:
            if len(batch) == 1:
                claim = batch[0].claim
                batch[0].rows = await self.store.claim_subtasks(
                    claim.queue, self.executor_id, claim.limit, config.lease_timeout,
                    after=claim.after, poison_after=config.poison_after)
            else:
                by_queue = await self.store.claim_subtasks_of_queues(
                    [r.claim for r in batch], self.executor_id, config.lease_timeout,
                    poison_after=config.poison_after)
                for request in batch:
                    request.rows = by_queue.get(request.claim.queue, [])
        except DatabaseError as exc:
            for request in batch:
                request.error = exc
        self.signals.statement.signal(len(batch))
        for request in batch:
            request.done.set()
