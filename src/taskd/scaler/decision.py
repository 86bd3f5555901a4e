"""The scaler's rule for one queue, as a pure function of the backlog, the limit and the clock.

Up by ``step`` (to at most ``max``) when ``backlog > 2 * limit`` and the last scale-up is older
than ``scale_up_interval``; down by ``step`` (to at least ``initial``) when
``backlog < limit / 2`` and the last scale-down is older than ``scale_down_interval``. A limit
found outside ``initial..max`` is brought back inside at once, without waiting for an interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from taskd.settings import QueueSettings

Direction = Literal["up", "down"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The limit to run at, which way it moved (None: unchanged), and why, for the log."""

    limit: int
    direction: Direction | None
    reason: str


def _cooling(last: float | None, now: float, interval: float) -> float | None:
    """Seconds since ``last`` when that is under ``interval``; None when the interval passed."""
    if last is None:
        return None
    elapsed = now - last
    return elapsed if elapsed < interval else None


def decide(
    backlog: int,
    limit: int,
    last_scale_up: float | None,
    last_scale_down: float | None,
    now: float,
    settings: QueueSettings,
) -> Decision:
    """Decide one queue's next concurrency limit.

    ``backlog`` is the queue's ready pending subtasks, ``limit`` its current limit;
    ``last_scale_up``/``last_scale_down`` are clock readings of the last change each way (None:
    never) and ``now`` a reading of the same clock. Pure: no I/O, no clock of its own.
    Raises ``ValueError`` for a negative backlog or a limit below 1.
    """
    if backlog < 0:
        raise ValueError(f"backlog must be >= 0, got {backlog}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    low, high, step = settings.initial, settings.max, settings.step

    # Outside the bounds (settings changed under a running limit): back inside at once.
    if limit > high:
        return Decision(high, "down", f"limit {limit} is above max {high}")
    if limit < low:
        return Decision(low, "up", f"limit {limit} is below initial {low}")

    if backlog > 2 * limit:
        if limit >= high:
            return Decision(limit, None, f"backlog {backlog} > 2 * {limit}, already at max {high}")
        elapsed = _cooling(last_scale_up, now, settings.scale_up_interval)
        if elapsed is not None:
            return Decision(
                limit, None,
                f"backlog {backlog} > 2 * {limit}, but the last scale-up was {elapsed:.1f}s ago"
                f" (scale_up_interval {settings.scale_up_interval:g}s)",
            )
        new = min(limit + step, high)
        return Decision(new, "up", f"backlog {backlog} > 2 * {limit}: {limit} -> {new}")

    # backlog < limit / 2, in integers so that odd limits are exact.
    if 2 * backlog < limit:
        if limit <= low:
            return Decision(
                limit, None, f"backlog {backlog} < {limit} / 2, already at initial {low}"
            )
        elapsed = _cooling(last_scale_down, now, settings.scale_down_interval)
        if elapsed is not None:
            return Decision(
                limit, None,
                f"backlog {backlog} < {limit} / 2, but the last scale-down was {elapsed:.1f}s"
                f" ago (scale_down_interval {settings.scale_down_interval:g}s)",
            )
        new = max(limit - step, low)
        return Decision(new, "down", f"backlog {backlog} < {limit} / 2: {limit} -> {new}")

    return Decision(
        limit, None, f"backlog {backlog} within {limit} / 2 .. 2 * {limit}: limit stays"
    )
