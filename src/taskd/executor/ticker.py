"""The ticker: each schedule's task, once per tick, across every daemon and with no leader.

Every daemon runs one. A pass reads the enabled schedules with the database clock, computes
each one's due ticks from that clock (:func:`taskd.queue.schedules.due_ticks`) and asks
``taskd.schedule_tick`` for each: the key ``(schedule, tick)`` is unique, so when several
daemons ask for the same tick, one creates its task and the others find it done. A daemon that
stops or freezes stops no one else: no lock and no transaction outlive one statement.

Between passes it sleeps until the earliest next tick, and at most ``check_interval`` (so that
a schedule added or resumed elsewhere is seen soon). Errors are logged and the next pass
carries on. At start it writes the settings' ``[schedules.<name>]`` to the database.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import anyio

from taskd.errors import ConfigError, DatabaseError, InvalidInput, TaskdError
from taskd.metrics import Metrics
from taskd.queue import schedules as sched
from taskd.queue.store import Store
from taskd.settings import ScheduleSettings, Settings

log = logging.getLogger(__name__)

# Passes between two prunes of old tick rows (a prune reads the whole tick table).
PRUNE_EVERY = 3600
# The shortest sleep between passes: a tick that is due now is not asked for in a busy loop.
MIN_SLEEP = 0.02
# Past the tick before asking for it: the database clock of the next pass is then surely past.
TICK_MARGIN = 0.005


@dataclass(frozen=True, slots=True)
class TickerConfig:
    """``check_interval``: the longest sleep between passes. ``grace``: a tick later than this
    many seconds was missed (its schedule's ``missed`` policy decides). ``retention``: tick rows
    older are deleted. ``schedules``: the settings' schedules, written at start."""

    check_interval: float = 5.0
    grace: float = 60.0
    retention: float = 7 * 86400.0
    max_payload_bytes: int = 1024 * 1024
    schedules: dict[str, ScheduleSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if min(self.check_interval, self.grace, self.retention) <= 0:
            raise ConfigError("ticker: check_interval, grace and retention must be > 0 seconds")

    @classmethod
    def from_settings(cls, settings: Settings) -> TickerConfig:
        return cls(settings.schedule_check_interval, settings.schedule_grace,
                   settings.retention, settings.max_payload_bytes, dict(settings.schedules))


class Ticker:
    """One daemon's ticker (see the module's docstring)."""

    def __init__(self, config: TickerConfig, store: Store, metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics

    async def run(self) -> None:
        await self._apply_settings()
        passes = 0
        while True:
            try:
                wait = await self.tick_once()
            except DatabaseError as exc:
                log.warning("ticker pass failed: %s", exc)
                wait = self.config.check_interval
            passes += 1
            if passes % PRUNE_EVERY == 0:
                try:
                    await sched.prune_ticks(self.store, self.config.retention)
                except DatabaseError as exc:
                    log.warning("pruning schedule ticks failed: %s", exc)
            await anyio.sleep(wait)

    async def _apply_settings(self) -> None:
        """The settings' schedules into the database, tried again while it is unavailable.
        A definition the database refuses stops the daemon (as bad settings do)."""
        while True:
            try:
                await sched.apply_settings_schedules(
                    self.store, self.config.schedules,
                    max_payload_bytes=self.config.max_payload_bytes)
                return
            except InvalidInput as exc:
                raise ConfigError(f"invalid setting schedules: {exc}") from exc
            except DatabaseError as exc:
                log.warning("could not write the settings' schedules, retrying: %s", exc)
                await anyio.sleep(self.config.check_interval * (1 + random.random()))

    async def tick_once(self) -> float:
        """One pass: create every due tick's task; return the seconds to sleep."""
        wait = self.config.check_interval
        for s in await sched.ticker_schedules(self.store):
            try:
                after = s.ticks_from if s.last_tick is None else max(s.last_tick, s.ticks_from)
                ticks = sched.due_ticks(s.cron, s.timezone, s.now, after=after,
                                        grace=self.config.grace, missed=s.missed,
                                        catch_up=s.catch_up)
                upcoming = sched.next_tick(s.cron, s.timezone, s.now)
            except (ValueError, KeyError) as exc:  # a definition written past the checks
                log.warning("schedule %r cannot be read: %s", s.name, exc)
                continue
            for tick in ticks:
                try:
                    task_id = await sched.create_tick(self.store, s.name, tick)
                except TaskdError as exc:  # e.g. its queue name or payload is refused
                    log.warning("schedule %r: tick %s not created: %s", s.name,
                                tick.isoformat(), exc)
                    break
                if task_id is not None:
                    self.metrics.schedule_ticks.labels(s.name).inc()
                    log.info("schedule tick", extra={"schedule": s.name,
                                                     "tick": tick.isoformat(),
                                                     "task_id": task_id})
            wait = min(wait, (upcoming - s.now).total_seconds() + TICK_MARGIN)
        return max(MIN_SLEEP, wait)
