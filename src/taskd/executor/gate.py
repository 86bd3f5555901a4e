"""The claim gate: open while this executor can prove it owns its leases."""

from __future__ import annotations

import logging

import anyio

log = logging.getLogger(__name__)


class ClaimGate:
    """Producers claim only while the gate is open; the heartbeat closes it when it fails
    for longer than the lease, and opens it again when a heartbeat succeeds."""

    def __init__(self) -> None:
        self._open = anyio.Event()
        self._open.set()
        self.reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def open(self) -> None:
        if not self._open.is_set():
            log.info("claiming resumed")
            self.reason = None
            self._open.set()

    def close(self, reason: str) -> None:
        if self._open.is_set():
            log.warning("claiming paused: %s", reason)
            self.reason = reason
            self._open = anyio.Event()

    async def wait_open(self) -> None:
        while not self._open.is_set():
            await self._open.wait()
