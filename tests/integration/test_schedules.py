"""Schedules on a real database: one task per tick whoever asks, missed ticks, management."""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
import pytest

from taskd.errors import InvalidInput, ScheduleExists, ScheduleNotFound
from taskd.executor.ticker import Ticker, TickerConfig
from taskd.metrics import Metrics
from taskd.queue import schedules as sched
from taskd.queue.status import read_status
from taskd.queue.store import Store
from taskd.settings import ScheduleSettings
from tests.integration.api_support import Client, assert_error

pytestmark = pytest.mark.anyio
AConn = psycopg.AsyncConnection[tuple[Any, ...]]


def spec(**fields: Any) -> ScheduleSettings:
    return ScheduleSettings(**{"cron": "* * * * * *", "kind": "noop", **fields})


async def scalar(conn: AConn, query: str, *params: Any) -> Any:
    row = await (await conn.execute(query, params)).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


async def test_racing_callers_create_a_tick_once(store: Store, database_url: str,
                                                  conn: AConn) -> None:
    await sched.put_schedule(store, "every", spec(), replace=False)
    tick = await scalar(conn, "SELECT date_trunc('second', now()) + interval '1 second'")
    # Ticks after ticks_from only: wait until the database clock has passed this tick.
    await conn.execute("UPDATE taskd.schedules SET ticks_from = ticks_from - interval '1 hour'")
    results: list[int | None] = []

    async def one() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
            row = await (await c.execute("SELECT taskd.schedule_tick('every', %s)",
                                         (tick,))).fetchone()
            assert row is not None
            results.append(row[0])

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    created = [r for r in results if r is not None]
    assert len(results) == 20 and len(created) == 1
    assert await scalar(conn, "SELECT count(*) FROM taskd.tasks") == 1
    assert await scalar(conn, "SELECT params->>'schedule' FROM taskd.tasks") == "every"
    assert await scalar(conn, "SELECT last_task_id FROM taskd.schedules") == created[0]


async def test_a_ticker_pass_creates_the_ticks_within_the_grace_and_skips_older(
    store: Store, conn: AConn,
) -> None:
    await sched.put_schedule(store, "every", spec(), replace=False)
    await sched.put_schedule(store, "hourly", spec(cron="@hourly", missed="catch_up",
                                                   catch_up=2), replace=False)
    # As if created ten hours ago and no daemon ran since.
    await conn.execute("UPDATE taskd.schedules SET ticks_from = now() - interval '10 hours'")
    ticker = Ticker(TickerConfig(grace=5), store, Metrics())
    wait = await ticker.tick_once()
    assert 0 < wait <= 1.01
    by_schedule = dict(await (await conn.execute(
        "SELECT schedule, count(*) FROM taskd.schedule_ticks GROUP BY 1")).fetchall())
    # every: only the ticks of the last 5 s (5 or 6, by where now falls in its second);
    # hourly: none in the grace, the latest two missed ones caught up.
    assert by_schedule["every"] in (5, 6) and by_schedule["hourly"] == 2, by_schedule
    assert await scalar(conn, "SELECT count(*) FROM taskd.tasks") == sum(by_schedule.values())
    # A second pass right after: nothing again (each tick once).
    before = await scalar(conn, "SELECT count(*) FROM taskd.tasks")
    await ticker.tick_once()
    assert await scalar(conn, "SELECT count(*) FROM taskd.tasks") - before <= 1


async def test_paused_schedules_tick_not_and_resume_from_now(store: Store, conn: AConn) -> None:
    await sched.put_schedule(store, "every", spec(enabled=False), replace=False)
    await conn.execute("UPDATE taskd.schedules SET ticks_from = now() - interval '1 hour'")
    ticker = Ticker(TickerConfig(), store, Metrics())
    await ticker.tick_once()
    assert await scalar(conn, "SELECT count(*) FROM taskd.tasks") == 0
    await sched.set_schedule_enabled(store, "every", True)
    # The pause is not caught up: ticks start after the resume.
    assert await scalar(conn, "SELECT ticks_from > now() - interval '1 minute'"
                              " FROM taskd.schedules")
    rows = await sched.list_schedules(store)
    assert rows[0].enabled and rows[0].next_tick is not None


async def test_run_now_submits_outside_the_ticks(store: Store, conn: AConn) -> None:
    await sched.put_schedule(store, "every", spec(enabled=False, payloads=[{"a": 1}, {"a": 2}]),
                             replace=False)
    task_id = await sched.run_schedule_now(store, "every")
    assert await scalar(conn, "SELECT total FROM taskd.tasks WHERE id = %s", task_id) == 2
    row = (await sched.list_schedules(store))[0]
    assert row.last_task_id == task_id and row.last_task_status == "pending"
    assert row.last_tick is None
    report = await read_status(store, dead_after=30)
    assert [(s.name, s.last_task_id, s.last_task_status) for s in report.schedules] == [
        ("every", task_id, "pending")]
    assert report.to_json()["schedules"][0]["name"] == "every"


async def test_hostile_definitions_write_nothing(store: Store, conn: AConn) -> None:
    bad = ScheduleSettings.model_construct(**{**spec().model_dump(), "cron": "61 * * * *"})
    with pytest.raises(InvalidInput, match="cron expression '61 \\* \\* \\* \\*' is not valid"):
        await sched.put_schedule(store, "bad", bad, replace=False)
    bad = ScheduleSettings.model_construct(**{**spec().model_dump(), "timezone": "Nowhere/X"})
    with pytest.raises(InvalidInput, match="time zone 'Nowhere/X' is unknown"):
        await sched.put_schedule(store, "bad", bad, replace=False)
    with pytest.raises(InvalidInput, match="schedule name"):
        await sched.put_schedule(store, "Bad Name", spec(), replace=False)
    with pytest.raises(InvalidInput, match="queue"):
        await sched.put_schedule(store, "bad", ScheduleSettings.model_construct(
            **{**spec().model_dump(), "queue": "No Such"}), replace=False)
    assert await scalar(conn, "SELECT count(*) FROM taskd.schedules") == 0
    for action in (lambda: sched.set_schedule_enabled(store, "nope", False),
                   lambda: sched.delete_schedule(store, "nope"),
                   lambda: sched.run_schedule_now(store, "nope")):
        with pytest.raises(ScheduleNotFound, match="no schedule 'nope'"):
            await action()
    assert await scalar(conn, "SELECT count(*) FROM taskd.tasks") == 0


async def test_settings_schedules_are_applied_and_keep_a_run_time_pause(
    store: Store, conn: AConn,
) -> None:
    await sched.apply_settings_schedules(store, {"nightly": spec(cron="0 3 * * *")},
                                         max_payload_bytes=1024)
    await sched.set_schedule_enabled(store, "nightly", False)
    # Another daemon starts with a changed expression: the definition changes, the pause stays.
    await sched.apply_settings_schedules(store, {"nightly": spec(cron="0 4 * * *")},
                                         max_payload_bytes=1024)
    row = (await sched.list_schedules(store))[0]
    assert (row.cron, row.enabled, row.source) == ("0 4 * * *", False, "settings")
    with pytest.raises(ScheduleExists):
        await sched.put_schedule(store, "nightly", spec(), replace=False)
    await sched.delete_schedule(store, "nightly")
    assert await sched.list_schedules(store) == []


def test_admin_api_manages_schedules(client: Client, db: psycopg.Connection[Any]) -> None:
    admin = client("root", admin=True)
    assert_error(client("alice").get("/v1/schedules"), 403, 4003)
    body = {"cron": "*/5 * * * *", "timezone": "Europe/Paris", "kind": "noop"}
    created = admin.put("/v1/schedules/report", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["next_tick"] is not None
    assert admin.put("/v1/schedules/report", json=body).status_code == 200
    assert admin.post("/v1/schedules/report/pause").json()["enabled"] is False
    assert admin.post("/v1/schedules/report/resume").json()["enabled"] is True
    run = admin.post("/v1/schedules/report/run-now")
    assert run.status_code == 201 and run.json()["task_id"] >= 1
    listed = admin.get("/v1/schedules").json()["schedules"]
    assert [(s["name"], s["last_task_status"]) for s in listed] == [("report", "pending")]
    bad = admin.put("/v1/schedules/other", json={**body, "cron": "not cron"})
    assert bad.status_code == 422, bad.text
    bad = admin.put("/v1/schedules/other", json={**body, "timezone": "Mars/Base"})
    assert bad.status_code == 422 and "Mars/Base" in bad.text
    assert_error(admin.post("/v1/schedules/nope/pause"), 404, 4004, "no schedule 'nope'")
    assert admin.delete("/v1/schedules/report").status_code == 204
    assert_error(admin.delete("/v1/schedules/report"), 404, 4004)
    assert db.execute("SELECT count(*) FROM taskd.schedules").fetchone() == (0,)
