"""Which ticks of a cron expression are due: within the grace always, older by the policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskd.errors import InvalidInput
from taskd.queue.schedules import check_schedule, due_ticks, next_tick
from taskd.settings import ScheduleSettings, cron_problem, load_settings

NOW = datetime(2026, 3, 1, 12, 0, 30, 250_000, tzinfo=UTC)


def test_every_second_within_the_grace_is_due_oldest_first() -> None:
    ticks = due_ticks("* * * * * *", "UTC", NOW, after=NOW - timedelta(seconds=5), grace=60,
                      missed="skip", catch_up=1)
    assert ticks == [NOW.replace(microsecond=0) - timedelta(seconds=s) for s in (4, 3, 2, 1, 0)]


def test_a_tick_exactly_at_now_is_due_and_the_last_tick_is_not_again() -> None:
    at = NOW.replace(microsecond=0)
    assert due_ticks("* * * * * *", "UTC", at, after=at - timedelta(seconds=1), grace=60,
                     missed="skip", catch_up=1) == [at]
    assert due_ticks("* * * * * *", "UTC", at, after=at, grace=60, missed="skip",
                     catch_up=1) == []


def test_skip_drops_ticks_older_than_the_grace() -> None:
    ticks = due_ticks("* * * * *", "UTC", NOW, after=NOW - timedelta(hours=3), grace=60,
                      missed="skip", catch_up=1)
    assert ticks == [datetime(2026, 3, 1, 12, 0, tzinfo=UTC)]


def test_catch_up_creates_the_latest_n_missed_ticks() -> None:
    ticks = due_ticks("@hourly", "UTC", NOW, after=NOW - timedelta(hours=10), grace=60,
                      missed="catch_up", catch_up=3)
    # 12:00 is within the grace (30 s late); 11:00, 10:00, 09:00 are the three caught up.
    assert [t.hour for t in ticks] == [9, 10, 11, 12]


def test_time_zone_decides_the_wall_clock() -> None:
    # 02:30 in Paris (UTC+1 in March before the change) is 01:30 UTC.
    after = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    tick = next_tick("30 2 * * *", "Europe/Paris", after)
    assert tick.astimezone(UTC) == datetime(2026, 3, 2, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(("cron", "tz", "says"), [
    ("61 * * * *", "UTC", "not valid"),
    ("* * *", "UTC", "has 3 fields"),
    ("0 0 * * * 0 2026", "UTC", "has 7 fields"),
    ("@every", "UTC", "not a known alias"),
    ("", "UTC", "1 to 200 characters"),
    ("* * * * *", "Mars/Base", "time zone 'Mars/Base' is unknown"),
    ("* * * * *", "../../etc/passwd", "is unknown"),
])
def test_hostile_expressions_and_zones_are_named(cron: str, tz: str, says: str) -> None:
    problem = cron_problem(cron, tz)
    assert problem is not None and says in problem
    with pytest.raises(InvalidInput, match=r"cron|time zone"):
        check_schedule("s", ScheduleSettings.model_construct(
            cron=cron, timezone=tz, queue="standard", kind="noop", payloads=[{}], params={},
            priority=0, max_attempts=4, enabled=True, missed="skip", catch_up=1), 1024)


def test_settings_refuse_a_bad_schedule_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskd.errors import ConfigError

    monkeypatch.setenv("TASKD_SCHEDULES__NIGHTLY__CRON", "99 * * * *")
    monkeypatch.setenv("TASKD_SCHEDULES__NIGHTLY__KIND", "noop")
    with pytest.raises(ConfigError, match=r"schedules\.nightly.*'99 \* \* \* \*' is not valid"):
        load_settings()
    monkeypatch.setenv("TASKD_SCHEDULES__NIGHTLY__CRON", "@daily")
    assert load_settings().schedules["nightly"].cron == "@daily"
