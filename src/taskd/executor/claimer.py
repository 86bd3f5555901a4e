"""The claimer: the claims of the executor's producers, several queues in one statement.

A claim's fixed cost (round trip, plan, commit: about 1.5 ms of PostgreSQL) is paid per
statement. A queue with few slots claims few rows at a time, so with many such queues the fixed
cost was spread over few rows: 50 queues of 40 slots drained at 0.28-0.51 times the rate of one
queue of 2,000 (docs/steady-state.md, "Many queues"). Producers hand their claims to the
claimer instead; it runs one statement at a time, and the claims that arrived meanwhile go
into the next together (``Store.claim_subtasks_of_queues``: each queue its own limit and resume
point). A claim that finds the claimer idle runs at once, alone, as ``Store.claim_subtasks``.
While claims come back to back (a drain), the next statement first waits ``gather`` (2 ms) for
more to join: without it, a statement in a drain of 50 queues carried 5 queues' claims on
average; with it, all 50. Queues with a rate limit or a ``cluster_max`` claim on their own
(their statements lock and count per queue), and so does a claim on the listening connection
just after a notification.
"""

from __future__ import annotations

import logging
import math
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
    rescuer's threshold (the claim skips suspects). ``gather``: while busy (a statement ended
    within ``busy_within``), how long the next waits for more claims to join. Raises
    :class:`ConfigError` for a lease_timeout <= 0 or a negative gather or busy_within."""

    lease_timeout: float
    poison_after: int = DEFAULT_POISON_AFTER
    gather: float = 0.002
    busy_within: float = 0.01

    def __post_init__(self) -> None:
        if not self.lease_timeout > 0:
            raise ConfigError("claimer: lease_timeout must be > 0 seconds")
        if self.gather < 0 or self.busy_within < 0:
            raise ConfigError("claimer: gather and busy_within must be >= 0 seconds")

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
        last_end = -math.inf
        try:
            while True:
                while not self._waiting:
                    await self._added.wait()
                if anyio.current_time() - last_end < self.config.busy_within:
                    # Busy: claims come back to back, each queue's after its own ran. A moment
                    # for more of them to join makes the statement's fixed cost everyone's.
                    await anyio.sleep(self.config.gather)
                batch, self._waiting = self._waiting, []
                # Shielded: a statement cut off mid-flight could commit and lose its rows.
                with anyio.CancelScope(shield=True):
                    await self._claim_for(batch)
                last_end = anyio.current_time()
        finally:
            # Stopped (a second signal, a crash elsewhere): the producers' shielded waits end.
            waiting, self._waiting = self._waiting, []
            for request in waiting:
                request.error = DatabaseError("the claimer stopped before this claim ran")
                request.done.set()

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
        log.debug("claimed for %d queues", len(batch))
        for request in batch:
            request.done.set()
