"""Three real daemons tick one per-second schedule: one task per tick, no tick missed, also
while one of them is killed. Ticks come from the database clock; there is no leader."""

from __future__ import annotations

import pytest

from tests.system.daemons import daemons, query, scalar, wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

WINDOW = 40  # seconds of database time watched
EVERY_SECOND = {
    # The settings' [schedules.every], written by each daemon at start.
    "TASKD_SCHEDULES__EVERY__CRON": "* * * * * *",
    "TASKD_SCHEDULES__EVERY__KIND": "noop",
    "TASKD_SCHEDULES__EVERY__PAYLOADS": '[{"from": "settings"}]',
}


def test_three_daemons_create_each_tick_once_and_miss_none(database_url: str) -> None:
    with daemons(database_url, 3, **EVERY_SECOND) as fleet:
        start = scalar(database_url, "SELECT now()")
        # A third of the way in, one daemon dies without a word: the others go on ticking.
        wait_for(lambda: scalar(database_url, "SELECT now() > %s + interval '13 seconds'",
                                start), timeout=WINDOW, message="a third of the window")
        fleet[0].kill()
        wait_for(lambda: scalar(database_url, "SELECT now() > %s + make_interval(secs => %s)",
                                start, WINDOW + 1.5),
                 timeout=2 * WINDOW, message="the end of the window")
        # One row per tick, each tick a whole second of the window, none missing.
        ticks = query(database_url,
                      "SELECT extract(epoch FROM tick)::bigint, task_id"
                      "  FROM taskd.schedule_ticks"
                      " WHERE schedule = 'every' AND tick > %s"
                      "   AND tick <= %s + make_interval(secs => %s) ORDER BY tick",
                      start, start, WINDOW)
        seconds = [t for t, _ in ticks]
        assert len(ticks) >= WINDOW - 1, ticks
        assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), "a tick missed"
        assert all(task_id is not None for _, task_id in ticks)
        # Exactly one task per tick: no task of this schedule without its tick, none twice.
        per_tick = query(database_url,
                         "SELECT params->>'tick', count(*) FROM taskd.tasks"
                         " WHERE params->>'schedule' = 'every' GROUP BY 1 HAVING count(*) > 1")
        assert per_tick == []
        tasks = scalar(database_url, "SELECT count(*) FROM taskd.tasks"
                                     " WHERE params->>'schedule' = 'every'")
        assert tasks == scalar(database_url, "SELECT count(*) FROM taskd.schedule_ticks")
        assert scalar(database_url, "SELECT payload FROM taskd.subtasks LIMIT 1") == {
            "from": "settings"}
        # More than one daemon created ticks: there is no leader.
        creators = {d.executor_id for d in fleet
                    if any(e.get("message") == "schedule tick" for e in d.events())}
        assert len(creators) >= 2, creators
