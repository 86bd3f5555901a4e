"""The claim gate: producers claim only while no one holds it closed.

Two things close it: the heartbeat, while this executor cannot prove it owns its leases
(heartbeats failing for longer than the lease), and the quarantine, while a suspected poison
pill runs alone. Each closes and opens it under its own name, so one cannot open what the
other closed.
"""

from __future__ import annotations

import logging

import anyio

from taskd.executor.condition import Condition

log = logging.getLogger(__name__)


class ClaimGate:
    def __init__(self) -> None:
        self._open = anyio.Event()
        self._open.set()
        self._closed_by: dict[str, str] = {}  # who -> why
        self._in_flight = 0  # claims that passed the gate and have not handed their rows on
        self._passed = Condition()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    @property
    def reason(self) -> str | None:
        """Why it is closed (the reasons joined), None while open."""
        return "; ".join(self._closed_by.values()) or None

    def close(self, reason: str, *, by: str = "heartbeat") -> None:
        if by in self._closed_by:
            return
        if self._open.is_set():
            self._open = anyio.Event()
        self._closed_by[by] = reason
        log.log(logging.WARNING if by == "heartbeat" else logging.INFO,
                "claiming paused: %s", reason)

    def open(self, *, by: str = "heartbeat") -> None:
        if self._closed_by.pop(by, None) is None:
            return
        log.info("claiming resumed" if not self._closed_by else "claiming still paused: %s",
                 self.reason)
        if not self._closed_by:
            self._open.set()

    def passing(self) -> _Passage:
        """``async with gate.passing():`` waits until open, then counts the block as a claim in
        flight until it ends: a claim that passed the gate before it closed still adds running
        subtasks."""
        return _Passage(self)

    async def wait_no_claims(self) -> None:
        """Return once no claim that passed the gate is still in flight."""
        while self._in_flight:
            await self._passed.wait()


class _Passage:
    """One claim through the gate (:meth:`ClaimGate.passing`). A class, not a generator
    context: it lies between a notification and the claim it wakes, where every step of a
    process that slept until then costs (enqueue-to-start: docs/benchmarks.md)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: ClaimGate) -> None:
        self._gate = gate

    async def __aenter__(self) -> None:
        gate = self._gate
        while not gate._open.is_set():
            await gate._open.wait()
        gate._in_flight += 1

    async def __aexit__(self, *exc_info: object) -> None:
        gate = self._gate
        gate._in_flight -= 1
        gate._passed.notify()
