"""Schedules (cron): their rows, their ticks, and the rules a definition must keep.

A tick's time is computed from the database clock (``now()`` read with the schedules) and the
schedule's cron expression in its time zone (croniter); ``taskd.schedule_tick`` then creates the
tick's task once, whichever daemon asks first: the key ``(schedule, tick)`` is unique.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from croniter import croniter

from taskd.errors import InvalidInput, ScheduleExists, ScheduleNotFound
from taskd.queue.store import Store
from taskd.queue.submission import validate_submission
from taskd.settings import SCHEDULE_NAME_PATTERN, ScheduleSettings, cron_problem

Missed = Literal["skip", "catch_up"]
# The most ticks one schedule gets in one pass of a ticker (a bound, never reached by a
# schedule of at most one tick a second and a grace of minutes).
MAX_TICKS_PER_PASS = 1000


@dataclass(frozen=True, slots=True)
class TickerSchedule:
    """An enabled schedule as a ticker needs it, with the database clock."""

    name: str
    cron: str
    timezone: str
    missed: Missed
    catch_up: int
    ticks_from: datetime
    last_tick: datetime | None
    now: datetime


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A schedule as ``taskd schedules list``, ``taskd status`` and the API show it."""

    name: str
    cron: str
    timezone: str
    queue: str
    kind: str
    payloads: list[dict[str, Any]]
    params: dict[str, Any]
    priority: int
    max_attempts: int
    enabled: bool
    missed: Missed
    catch_up: int
    source: str
    last_tick: datetime | None
    next_tick: datetime | None
    last_task_id: int | None
    last_task_status: str | None
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "cron": self.cron, "timezone": self.timezone,
            "queue": self.queue, "kind": self.kind, "payloads": self.payloads,
            "params": self.params, "priority": self.priority,
            "max_attempts": self.max_attempts, "enabled": self.enabled, "missed": self.missed,
            "catch_up": self.catch_up, "source": self.source,
            "last_tick": _iso(self.last_tick), "next_tick": _iso(self.next_tick),
            "last_task_id": self.last_task_id, "last_task_status": self.last_task_status,
            "created_at": _iso(self.created_at), "updated_at": _iso(self.updated_at),
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _croniter(cron: str, timezone: str, start: datetime) -> Any:
    return croniter(cron, start.astimezone(ZoneInfo(timezone)))


def next_tick(cron: str, timezone: str, now: datetime) -> datetime:
    """The first tick of the expression after ``now`` (in ``timezone``)."""
    value: datetime = _croniter(cron, timezone, now).get_next(datetime)
    return value


def due_ticks(
    cron: str, timezone: str, now: datetime, *, after: datetime, grace: float,
    missed: Missed, catch_up: int,
) -> list[datetime]:
    """The ticks in ``(after, now]`` to create now, oldest first.

    A tick no older than ``grace`` seconds is always due: the ticker is late, not absent. Older
    ones were missed while no daemon ran: none with ``missed="skip"``, the latest ``catch_up``
    of them with ``"catch_up"``.
    """
    late_before = now - timedelta(seconds=grace)
    # One microsecond on: croniter's get_prev is strictly before its start, and a tick that
    # falls exactly on now is due.
    walk = _croniter(cron, timezone, now + timedelta(microseconds=1))
    ticks: list[datetime] = []
    old = 0
    while len(ticks) < MAX_TICKS_PER_PASS:
        tick: datetime = walk.get_prev(datetime)
        if tick <= after:
            break
        if tick <= late_before:
            if missed == "skip" or old >= catch_up:
                break
            old += 1
        ticks.append(tick)
    ticks.reverse()
    return ticks


def check_schedule(name: str, spec: ScheduleSettings, max_payload_bytes: int) -> tuple[str, str]:
    """Check a schedule's name and definition; return its (payloads, params) as JSON.

    Raises :class:`InvalidInput` naming the problem (nothing is written).
    """
    import re

    if not isinstance(name, str) or not re.match(SCHEDULE_NAME_PATTERN, name):
        raise InvalidInput(f"schedule name {name!r:.100} must match {SCHEDULE_NAME_PATTERN}",
                           field="name")
    problem = cron_problem(spec.cron, spec.timezone)
    if problem is not None:
        raise InvalidInput(problem, field="cron" if problem.startswith("cron") else "timezone")
    return validate_submission(
        spec.queue, spec.kind, spec.payloads, name=name, priority=spec.priority,
        params=spec.params, user_id=None, max_attempts=spec.max_attempts, delay=0.0,
        max_payload_bytes=max_payload_bytes,
    )


async def put_schedule(
    store: Store, name: str, spec: ScheduleSettings, *, replace: bool,
    source: Literal["settings", "runtime"] = "runtime", max_payload_bytes: int = 1024 * 1024,
) -> bool:
    """Create the schedule ``name``, or with ``replace`` change its definition (its enabled
    flag is kept). Returns True when it was created.

    Raises :class:`InvalidInput` for a bad definition and :class:`ScheduleExists` when it
    exists and ``replace`` is false; nothing is written then.
    """
    payloads_json, params_json = check_schedule(name, spec, max_payload_bytes)
    rows = await store.fetch_rows("upsert_schedule", {
        "name": name, "cron": spec.cron, "timezone": spec.timezone, "queue": spec.queue,
        "kind": spec.kind, "payloads": payloads_json, "params": params_json,
        "priority": spec.priority, "max_attempts": spec.max_attempts, "enabled": spec.enabled,
        "missed": spec.missed, "catch_up": spec.catch_up, "source": source,
        "replace": replace,
    })
    if not rows:
        raise ScheduleExists(f"schedule {name!r} exists (replace it to change it)")
    return bool(rows[0]["created"])


async def apply_settings_schedules(
    store: Store, schedules: dict[str, ScheduleSettings], *, max_payload_bytes: int,
) -> None:
    """Write the settings' ``[schedules.<name>]`` to the database (a daemon's start)."""
    for name, spec in schedules.items():
        await put_schedule(store, name, spec, replace=True, source="settings",
                           max_payload_bytes=max_payload_bytes)


async def set_schedule_enabled(store: Store, name: str, enabled: bool) -> None:
    """Pause (``enabled=False``) or resume; a resumed schedule does not catch up its pause.
    Raises :class:`ScheduleNotFound`."""
    if not await store.fetch_rows("set_schedule_enabled", {"name": name, "enabled": enabled}):
        raise ScheduleNotFound(f"no schedule {name!r}")


async def delete_schedule(store: Store, name: str) -> None:
    """Delete a schedule and its tick history (its tasks stay). Raises
    :class:`ScheduleNotFound`."""
    if not await store.fetch_rows("delete_schedule", {"name": name}):
        raise ScheduleNotFound(f"no schedule {name!r}")


async def run_schedule_now(store: Store, name: str) -> int:
    """Submit the schedule's task now, outside its ticks (even when paused); its task id.
    Raises :class:`ScheduleNotFound`."""
    rows = await store.fetch_rows("schedule_run_now", {"schedule": name})
    if not rows:
        raise ScheduleNotFound(f"no schedule {name!r}")
    return int(rows[0]["task_id"])


async def list_schedules(store: Store, name: str | None = None) -> list[ScheduleRow]:
    """Every schedule (or the one named), with its next tick by the database clock."""
    rows = await store.fetch_rows("list_schedules", {"name": name})
    found = []
    for r in rows:
        try:
            upcoming: datetime | None = (next_tick(r["cron"], r["timezone"], r["now"])
                                         if r["enabled"] else None)
        except (ValueError, KeyError):  # written past the checks, e.g. by hand in SQL
            upcoming = None
        found.append(ScheduleRow(
            name=r["name"], cron=r["cron"], timezone=r["timezone"], queue=r["queue"],
            kind=r["kind"], payloads=_json(r["payloads"]), params=_json(r["params"]),
            priority=r["priority"], max_attempts=r["max_attempts"], enabled=r["enabled"],
            missed=r["missed"], catch_up=r["catch_up"], source=r["source"],
            last_tick=r["last_tick"], next_tick=upcoming, last_task_id=r["last_task_id"],
            last_task_status=r["last_task_status"], created_at=r["created_at"],
            updated_at=r["updated_at"],
        ))
    return found


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


async def get_schedule(store: Store, name: str) -> ScheduleRow:
    """One schedule; raises :class:`ScheduleNotFound`."""
    found = await list_schedules(store, name)
    if not found:
        raise ScheduleNotFound(f"no schedule {name!r}")
    return found[0]


async def ticker_schedules(store: Store) -> list[TickerSchedule]:
    """The enabled schedules, each with the database clock of the same statement."""
    return await store.fetch_as("ticker_schedules", {}, TickerSchedule)


async def create_tick(store: Store, schedule: str, tick: datetime) -> int | None:
    """The tick's task, created unless it was before (by any daemon): its id, or None."""
    rows = await store.fetch_rows("schedule_tick", {"schedule": schedule, "tick": tick})
    task_id = rows[0]["task_id"]
    return None if task_id is None else int(task_id)


async def prune_ticks(store: Store, older_than: float, limit: int = 10_000) -> int:
    """Delete tick rows older than ``older_than`` seconds; how many."""
    rows = await store.fetch_rows("prune_schedule_ticks",
                                  {"older_than": older_than, "limit": limit})
    return len(rows)
