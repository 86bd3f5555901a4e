"""The operators' console over HTTP (a live ``taskd api`` on loopback, a real database):
sign-in, roles, CSRF, the CSP, hostile filters, and the actions with their audit rows.
The browser's view of the same pages is tests/system/test_console_browser.py."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio.lowlevel
import httpx
import psycopg
import pytest

from taskd.api import RunningApi, mint_token, serve_in_thread
from taskd.queue import console as db
from taskd.queue.store import Store
from taskd.settings import Settings
from tests.console_support import csrf_of, fail, sign_in, status_of, submit
from tests.integration.api_support import make_settings

PAGES = ["/console/overview", "/console/overview/live", "/console/tasks", "/console/errors",
         "/console/audit"]


Console = Callable[..., httpx.Client]


@pytest.fixture
def console(api: RunningApi, api_settings: Settings) -> Iterator[Console]:
    """``console("bob")`` or ``console("root", admin=True)``: a signed-in client."""
    opened: list[httpx.Client] = []

    def make(user: str, *, admin: bool = False) -> httpx.Client:
        opened.append(sign_in(api.url, api_settings.api, user, admin=admin))
        return opened[-1]

    yield make
    for c in opened:
        c.close()


def _audit(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT actor, action, target, row_count, finished_at IS NOT NULL"
                        " FROM taskd.console_audit ORDER BY id").fetchall()


def test_sign_in_keeps_the_token_in_a_strict_httponly_cookie(
    api: RunningApi, api_settings: Settings
) -> None:
    with httpx.Client(base_url=api.url, timeout=30) as c:
        form = c.get("/console/login")
        token = mint_token(api_settings.api, "root", admin=True, ttl=600)
        done = c.post("/console/login", data={"csrf": csrf_of(form.text), "token": token})
    assert done.status_code == 303
    cookie = next(v for v in done.headers.get_list("set-cookie")
                  if v.startswith("taskd_console="))
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "path=/console" in cookie.lower()
    assert "secure" not in attributes  # plain http on loopback; Secure over https
    assert 500 < int(re.search(r"Max-Age=(\d+)", cookie)[1]) <= 600  # type: ignore[index]


def test_every_page_has_the_csp_and_no_inline_script_or_style(
    console: Console,
    api: RunningApi, api_settings: Settings, db: psycopg.Connection[Any]
) -> None:
    task = submit(db, n=2)
    fail(db, task)
    c = console("root", admin=True)
    for path in [*PAGES, f"/console/tasks/{task}", "/console/errors/1",
                 f"/console/tasks/{task}/confirm?action=retry",
                 "/console/bulk/confirm?action=retry_failed", "/console/login"]:
        page = c.get(path)
        assert page.status_code == 200, (path, page.text)
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert "frame-ancestors 'none'" in csp
        assert page.headers["cache-control"] == "no-store"
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), path  # no inline script
        assert not re.search(r"\sstyle=|\son[a-z]+=|javascript:", page.text), path


def test_signed_out_and_bad_tokens_get_no_page(
    api: RunningApi, api_settings: Settings
) -> None:
    with httpx.Client(base_url=api.url, timeout=30) as c:
        for path in PAGES:
            r = c.get(path)
            assert (r.status_code, r.headers["location"]) == (303, "/console/login"), path
        assert c.get("/console/overview/live", headers={"HX-Request": "true"}).status_code == 401
        form = c.get("/console/login")
        for token in ["not-a-jwt",
                      mint_token(api_settings.api, "root", admin=True, ttl=10,
                                 now=time.time() - 3600)]:  # expired
            r = c.post("/console/login", data={"csrf": csrf_of(form.text), "token": token})
            assert r.status_code == 401
            assert "not valid here" in r.text
            assert "taskd_console=" not in r.headers.get("set-cookie", "")
        # The sign-in form's own CSRF token is required too.
        good = mint_token(api_settings.api, "root", admin=True, ttl=600)
        assert c.post("/console/login", data={"token": good}).status_code == 403


def test_read_only_sees_every_task_but_not_another_users_payload_and_changes_nothing(
    console: Console,
    api: RunningApi, api_settings: Settings, db: psycopg.Connection[Any]
) -> None:
    theirs = submit(db, n=1, user="alice", params={"secret": "alice-params"},
                    payload={"secret": "alice-payload"})
    fail(db, theirs, message="alice-error")
    mine = submit(db, n=1, user="bob", payload={"mine": "bob-payload"})
    bob = console("bob")
    listing = bob.get("/console/tasks").text
    assert f'href="/console/tasks/{theirs}"' in listing and "alice-params" not in listing
    page = bob.get(f"/console/tasks/{theirs}").text
    assert "alice-payload" not in page and "alice-params" not in page
    assert "alice-error" not in page and "another user" in page
    assert "bob-payload" in bob.get(f"/console/tasks/{mine}").text
    assert 'id="retry"' not in page and 'id="actions"' not in page
    assert 'id="bulk' not in listing and 'id="role">read-only' in listing
    assert bob.get(f"/console/tasks/{theirs}/confirm?action=retry").status_code == 403
    assert bob.get("/console/bulk/confirm?action=retry_failed").status_code == 403
    # A forged POST with bob's own valid CSRF token: 403, nothing changes.
    csrf = csrf_of(listing)
    for path, data in [(f"/console/tasks/{theirs}/retry", {}),
                       (f"/console/tasks/{mine}/cancel", {}),
                       (f"/console/tasks/{mine}/priority", {"priority": "9"}),
                       ("/console/bulk/retry_failed", {"max_id": "999"})]:
        r = bob.post(path, data={"csrf": csrf, **data})
        assert r.status_code == 403, path
        assert "admin role" in r.text
    assert (status_of(db, theirs), status_of(db, mine)) == ("failed", "pending")
    assert _audit(db) == []


def test_an_admin_post_without_the_csrf_token_is_refused(
    console: Console,
    api: RunningApi, api_settings: Settings, db: psycopg.Connection[Any]
) -> None:
    task = submit(db, n=1)
    fail(db, task)
    root = console("root", admin=True)
    other = console("root2", admin=True)
    for data in [{}, {"csrf": "0" * 64}, {"csrf": csrf_of(other.get("/console/tasks").text)}]:
        r = root.post(f"/console/tasks/{task}/retry", data=data)
        assert r.status_code == 403 and "CSRF" in r.text
    assert status_of(db, task) == "failed" and _audit(db) == []


HOSTILE = ["' OR 1=1 --", "standard'; DROP TABLE taskd.tasks; --", "<script>alert(1)</script>",
           '"><img src=x onerror=alert(1)>', "{{ 7*7 }}"]


def test_hostile_filter_values_are_harmless_and_shown_escaped(
    console: Console, db: psycopg.Connection[Any]
) -> None:
    submit(db, n=1, queue="standard")
    c = console("root", admin=True)
    for value in HOSTILE:
        for name in ("queue", "kind", "user"):
            page = c.get("/console/tasks", params={name: value})
            assert page.status_code == 200
            assert 'id="no-tasks"' in page.text  # compared as text: it matches nothing
            assert value not in page.text or value == "{{ 7*7 }}"
            assert "<script>alert" not in page.text and "<img src=x" not in page.text
            assert "49" not in page.text.split('id="filters"')[1].split("</form>")[0]
    assert db.execute("SELECT count(*) FROM taskd.tasks").fetchone() == (1,)


MALFORMED = [
    ({"bogus": "1"}, "unknown filter &#39;bogus&#39;"),
    ({"status": "broken"}, "status &#39;broken&#39; is not one of"),
    ({"from": "yesterday"}, "filter &#39;from&#39; is not a time"),
    ({"from": "2026-02-01", "to": "2026-01-01"}, "the time range is empty"),
    ({"sort": "name"}, "sort &#39;name&#39; is not one of"),
    ({"after": "1;DROP"}, "is not a page of this list"),
    ({"queue": "x" * 201}, "longer than 200"),
    ({"queue": "a\x01b"}, "control characters"),
]


def test_unknown_or_malformed_filters_get_a_clear_message(console: Console) -> None:
    c = console("root", admin=True)
    for query, message in MALFORMED:
        page = c.get("/console/tasks", params=query)
        assert page.status_code == 400, query
        assert message in page.text, query
        assert 'id="filter-error"' in page.text and 'id="bulk' not in page.text


def test_tasks_filter_sort_and_pages_by_cursor(
    console: Console,
    api: RunningApi, api_settings: Settings, db: psycopg.Connection[Any]
) -> None:
    ids = [submit(db, n=1, queue="standard", priority=i % 7) for i in range(120)]
    other = submit(db, n=1, queue="lumina", kind="lumina", user="carol")
    c = console("root", admin=True)

    def listed(params: dict[str, str]) -> tuple[list[int], str | None]:
        page = c.get("/console/tasks", params=params).text
        found = [int(x) for x in re.findall(r'<td><a href="/console/tasks/(\d+)">', page)]
        nxt = re.search(r'href="(/console/tasks\?[^"]+)" id="next-page"', page)
        return found, nxt[1].replace("&amp;", "&") if nxt else None

    seen, nxt = listed({"queue": "standard"})
    assert len(seen) == 50 and nxt is not None
    while nxt:
        page, nxt = listed(dict(httpx.URL(nxt).params))
        seen += page
    assert seen == sorted(ids, reverse=True)
    by_priority: list[int] = []
    page, nxt = listed({"queue": "standard", "sort": "priority"})
    by_priority += page
    while nxt:
        page, nxt = listed(dict(httpx.URL(nxt).params))
        by_priority += page
    assert by_priority == sorted(ids, key=lambda i: (ids.index(i) % 7, i), reverse=True)
    assert listed({"user": "carol"})[0] == [other]
    assert listed({"kind": "lumina", "status": "pending"})[0] == [other]
    assert listed({"from": "2000-01-01", "to": "2001-01-01"})[0] == []


def test_task_page_shows_subtasks_errors_and_stack_traces_and_errors_link_back(
    console: Console,
    api: RunningApi, api_settings: Settings, db: psycopg.Connection[Any]
) -> None:
    task = submit(db, n=3, payload={"image": "cat.png"})
    fail(db, task, error_type="KeyError", message="'size' <missing>",
         stack="Traceback (most recent call last):\n  File \"handler.py\", line 7")
    c = console("root", admin=True)
    page = c.get(f"/console/tasks/{task}").text
    assert page.count("KeyError: &#39;size&#39; &lt;missing&gt;") == 3
    assert "File &#34;handler.py&#34;, line 7" in page and "cat.png" in page
    assert "4 of 4" in page  # attempt of max_attempts
    errors = c.get("/console/errors").text
    [error_id] = re.findall(r'href="/console/errors/(\d+)"', errors)
    detail = c.get(f"/console/errors/{error_id}").text
    linked = re.findall(rf'href="/console/tasks/{task}#subtask-(\d+)"', detail)
    assert len(linked) == 3


def test_single_task_actions_are_confirmed_done_and_audited(
    console: Console,
    api: RunningApi, api_settings: Settings, db: psycopg.Connection[Any]
) -> None:
    failed = submit(db, n=2)
    fail(db, failed)
    waiting = submit(db, n=3)
    root = console("root", admin=True)
    confirm = root.get(f"/console/tasks/{failed}/confirm?action=retry").text
    assert "2 failed subtask(s)" in confirm
    r = root.post(f"/console/tasks/{failed}/retry", data={"csrf": csrf_of(confirm)})
    assert r.status_code == 200 and "2 failed subtask(s)" in r.text
    assert status_of(db, failed) == "processing"  # retried: unfinished again
    confirm = root.get(f"/console/tasks/{waiting}/confirm?action=priority&priority=7").text
    assert "from 0 to 7" in confirm and "3 unfinished" in confirm
    r = root.post(f"/console/tasks/{waiting}/priority",
                  data={"csrf": csrf_of(confirm), "priority": "7"})
    assert r.status_code == 200
    assert db.execute("SELECT DISTINCT priority FROM taskd.subtasks WHERE task_id = %s",
                      (waiting,)).fetchall() == [(7,)]
    r = root.post(f"/console/tasks/{waiting}/priority",
                  data={"csrf": csrf_of(confirm), "priority": "1001"})
    assert r.status_code == 400 and "-1000..1000" in r.text
    confirm = root.get(f"/console/tasks/{waiting}/confirm?action=cancel").text
    r = root.post(f"/console/tasks/{waiting}/cancel", data={"csrf": csrf_of(confirm)})
    assert r.status_code == 200 and "3 subtask(s)" in r.text
    assert status_of(db, waiting) == "cancelled"
    r = root.post(f"/console/tasks/{waiting}/cancel", data={"csrf": csrf_of(confirm)})
    assert r.status_code == 409 and "already ended" in r.text
    assert [(a[0], a[1], a[2].get("task_id"), a[3], a[4]) for a in _audit(db)] == [
        ("root", "retry_task", failed, 2, True),
        ("root", "set_priority", waiting, 3, True),
        ("root", "cancel_task", waiting, 3, True),
    ]
    assert "set_priority" in root.get("/console/audit").text


def test_bulk_retry_touches_the_filter_only_up_to_the_confirmed_count(
    console: Console,
    api: RunningApi, api_settings: Settings, db: psycopg.Connection[Any]
) -> None:
    mine = [submit(db, n=2, queue="standard", kind="noop") for _ in range(4)]
    elsewhere = submit(db, n=1, queue="lumina", kind="lumina")
    for task in [*mine, elsewhere]:
        fail(db, task)
    root = console("root", admin=True)
    confirm = root.get("/console/bulk/confirm",
                       params={"action": "retry_failed", "queue": "standard"}).text
    assert "4 task(s) with 8 failed subtask(s)" in confirm
    late = submit(db, n=1, queue="standard")  # failed after the operator saw the count
    fail(db, late)
    fields = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"',
                             confirm))
    r = root.post("/console/bulk/retry_failed", data=fields)
    assert r.status_code == 200, r.text
    assert "4 task(s) retried (8 subtask(s))" in r.text
    assert [status_of(db, t) for t in mine] == ["processing"] * 4  # unfinished again
    assert (status_of(db, elsewhere), status_of(db, late)) == ("failed", "failed")
    [(actor, action, target, rows, finished)] = _audit(db)
    assert (actor, action, rows, finished) == ("root", "retry_failed", 8, True)
    assert target["filter"] == {"status": "failed", "queue": "standard"}
    assert target["tasks"] == 4


def test_a_bulk_action_on_an_empty_filter_does_nothing_and_says_so(
    console: Console,
    api: RunningApi, api_settings: Settings, db: psycopg.Connection[Any]
) -> None:
    done = submit(db, n=1)
    root = console("root", admin=True)
    for action in ("retry_failed", "cancel_pending"):
        page = root.get("/console/bulk/confirm", params={"action": action, "queue": "nope"})
        assert page.status_code == 200 and "nothing would be done" in page.text
        assert 'id="confirm"' not in page.text
        r = root.post(f"/console/bulk/{action}",
                      data={"csrf": csrf_of(page.text), "queue": "nope", "max_id": "999999"})
        assert r.status_code == 200 and "nothing was done" in r.text
    assert _audit(db) == [] and status_of(db, done) == "pending"


@pytest.mark.anyio
async def test_bulk_cancel_runs_in_batches_as_one_recorded_operation(store: Store) -> None:
    ids = [await store.submit("standard", "noop", [{"n": 1}, {"n": 2}]) for _ in range(7)]
    started = await store.submit("standard", "noop", [{"n": 1}])
    async with store.pool.connection() as conn:
        await conn.execute("UPDATE taskd.tasks SET status = 'processing' WHERE id = %s",
                           (started,))
    flt = db.TaskFilter(status="pending", queue="standard")
    count = await db.count_bulk(store, flt)
    assert (count.tasks, count.subtasks) == (7, 14)
    report = await db.bulk_action(store, "cancel_pending", flt, max_id=count.max_id,
                                  actor="root", batch=3)
    assert (report.tasks, report.subtasks, report.batches) == (7, 14, 3)
    for task_id in ids:
        assert (await db.get_task(store, task_id)).status == "cancelled"
    assert (await db.get_task(store, started)).status == "processing"
    [entry] = await db.audit_log(store)
    assert (entry.action, entry.row_count, entry.target["tasks"]) == ("cancel_pending", 14, 7)
    assert entry.finished_at is not None
    await anyio.lowlevel.checkpoint()


ODD_URLS = [
    ("/console/tasks/abc", 404), ("/console/tasks/0", 404),
    ("/console/tasks/99999999999999999999", 404), ("/console/tasks/1?after=x", 404),
    ("/console/errors/abc", 404), ("/console/errors/99999999999999999999", 404),
    ("/console/errors?before=nonsense", 400), ("/console/errors?colour=red", 400),
    ("/console/tasks/1/confirm?action=retry", 404), ("/console/nope", 404),
    ("/console/bulk/confirm?action=drop", 400),
    ("/console/bulk/confirm?action=retry_failed&status=failed", 400),
    ("/console/bulk/confirm?action=retry_failed&from=never", 400),
]


def test_odd_urls_get_a_page_that_says_why_never_a_crash(console: Console) -> None:
    c = console("root", admin=True)
    for path, status in ODD_URLS:
        page = c.get(path)
        assert page.status_code == status, (path, page.text)
        assert "content-security-policy" in page.headers


def test_odd_posts_change_nothing(console: Console, db: psycopg.Connection[Any]) -> None:
    task = submit(db, n=1)
    c = console("root", admin=True)
    csrf = csrf_of(c.get("/console/tasks").text)
    for path, data, status in [
        ("/console/tasks/99999999999999999999/retry", {}, 409),
        (f"/console/tasks/{task}/retry", {}, 409),  # nothing failed
        (f"/console/tasks/{task}/priority", {"priority": "high"}, 400),
        ("/console/bulk/drop", {}, 404),
        ("/console/bulk/retry_failed", {"queue": "standard"}, 400),  # no max_id
        ("/console/bulk/retry_failed", {"max_id": "9", "colour": "red"}, 400),
    ]:
        r = c.post(path, data={"csrf": csrf, **data})
        assert r.status_code == status, (path, r.text)
    assert c.get(f"/console/tasks/{task}/retry").status_code == 405
    assert status_of(db, task) == "pending" and _audit(db) == []


def test_console_false_serves_no_console(database_url: str) -> None:
    with serve_in_thread(make_settings(database_url, console=False), database_url) as api:
        assert httpx.get(f"{api.url}/console/login", timeout=30).status_code == 404
        assert httpx.get(f"{api.url}/healthz", timeout=30).status_code == 200


def _paused(conn: psycopg.Connection[Any], queue: str) -> Any:
    row = conn.execute("SELECT paused, paused_by FROM taskd.queue_controls WHERE queue = %s",
                       (queue,)).fetchone()
    return None if row is None else tuple(row)


def test_an_admin_pauses_and_resumes_a_queue_from_the_overview_and_both_are_audited(
    console: Console, db: psycopg.Connection[Any]
) -> None:
    submit(db, n=2, queue="standard")
    root = console("root", admin=True)
    overview = root.get("/console/overview").text
    assert 'id="pause-standard" href="/console/queues/standard/confirm?action=pause"' in overview
    confirm = root.get("/console/queues/standard/confirm?action=pause").text
    assert "Pause queue &#39;standard&#39; on every executor" in confirm
    assert _paused(db, "standard") is None  # the confirmation writes nothing
    r = root.post("/console/queues/standard/pause", data={"csrf": csrf_of(confirm)})
    assert r.status_code == 200 and "is paused" in r.text
    assert _paused(db, "standard") == (True, "root")
    overview = root.get("/console/overview/live").text
    row = re.search(r'<tr id="queue-standard" class="paused">.*?</tr>', overview, re.S)
    assert row is not None and "paused by root since" in row[0]
    assert 'id="resume-standard"' in row[0] and 'id="pause-standard"' not in row[0]
    # Pausing again: a clear answer, no second audit row.
    assert root.get("/console/queues/standard/confirm?action=pause").status_code == 409
    again = root.post("/console/queues/standard/pause", data={"csrf": csrf_of(confirm)})
    assert again.status_code == 409 and "paused already" in again.text
    confirm = root.get("/console/queues/standard/confirm?action=resume").text
    assert "Resume queue &#39;standard&#39;" in confirm
    r = root.post("/console/queues/standard/resume", data={"csrf": csrf_of(confirm)})
    assert r.status_code == 200 and "resumed" in r.text
    assert _paused(db, "standard") == (False, None)
    assert [(a[0], a[1], a[2], a[3], a[4]) for a in _audit(db)] == [
        ("root", "pause_queue", {"queue": "standard"}, 1, True),
        ("root", "resume_queue", {"queue": "standard"}, 1, True),
    ]
    assert "pause_queue" in root.get("/console/audit").text


def test_an_idle_paused_queue_and_its_rate_limit_are_shown_to_read_only_without_buttons(
    console: Console, db: psycopg.Connection[Any]
) -> None:
    db.execute("INSERT INTO taskd.queue_controls (queue, rate_limit, rate_period)"
               " VALUES ('lumina', 20, 1)")
    db.execute("SELECT taskd.pause_queue('lumina', 'alice')")
    bob = console("bob")
    page = bob.get("/console/overview").text
    row = re.search(r'<tr id="queue-lumina" class="paused">.*?</tr>', page, re.S)
    assert row is not None, page
    assert "paused by alice since" in row[0] and "20/s" in row[0]
    assert 'id="resume-' not in page and 'id="pause-' not in page
    assert bob.get("/console/queues/lumina/confirm?action=resume").status_code == 403
    csrf = csrf_of(page)
    for action in ["resume", "pause"]:
        r = bob.post(f"/console/queues/lumina/{action}", data={"csrf": csrf})
        assert r.status_code == 403 and "admin role" in r.text
    assert _paused(db, "lumina") == (True, "alice") and _audit(db) == []


def test_an_unknown_queue_gets_a_clear_message_and_nothing_is_written(
    console: Console, db: psycopg.Connection[Any]
) -> None:
    root = console("root", admin=True)
    page = root.get("/console/queues/nosuch/confirm?action=pause")
    assert page.status_code == 404 and "no queue &#39;nosuch&#39;" in page.text.lower()
    csrf = csrf_of(root.get("/console/overview").text)
    for path in ["/console/queues/nosuch/pause", "/console/queues/nosuch/resume",
                 "/console/queues/BAD%20name/pause"]:
        r = root.post(path, data={"csrf": csrf})
        assert r.status_code == 404 and "Nothing was changed" in r.text, path
    assert root.get("/console/queues/standard/confirm?action=drop").status_code == 400
    assert root.post("/console/queues/standard/drop", data={"csrf": csrf}).status_code == 404
    assert db.execute("SELECT count(*) FROM taskd.queue_controls"
                      " WHERE queue NOT IN ('standard', 'lumina')").fetchone() == (0,)
    assert _paused(db, "standard") in (None, (False, None)) and _audit(db) == []


def test_the_overview_shows_schedules_with_their_state_ticks_and_last_task(
    console: Console, db: psycopg.Connection[Any]
) -> None:
    bob = console("bob")
    assert 'id="schedules"' not in bob.get("/console/overview").text  # none: no section
    task = submit(db, n=1)
    fail(db, task)
    db.execute("INSERT INTO taskd.schedules (name, cron, queue, kind, last_tick, last_task_id)"
               " VALUES ('nightly', '0 3 * * *', 'standard', 'noop',"
               " '2026-01-02 03:00+00', %s)", (task,))
    db.execute("INSERT INTO taskd.schedules (name, cron, queue, kind, enabled)"
               " VALUES ('hourly', '0 * * * *', 'lumina', 'lumina', false)")
    page = bob.get("/console/overview/live").text
    nightly = re.search(r'<tr id="schedule-nightly" class="enabled">.*?</tr>', page, re.S)
    assert nightly is not None, page
    assert "0 3 * * *" in nightly[0] and "2026-01-02" in nightly[0]
    assert f'href="/console/tasks/{task}">{task}</a> failed' in nightly[0]
    assert re.search(r"<td>\d{4}-\d\d-\d\d 03:00:00 UTC</td>", nightly[0])  # next tick
    hourly = re.search(r'<tr id="schedule-hourly" class="paused">.*?</tr>', page, re.S)
    assert hourly is not None and "<td>paused</td>" in hourly[0]
    assert hourly[0].count("<td>—</td>") == 3  # no last tick, no next tick, no task


def test_the_overview_shows_undelivered_and_dead_notifications_when_there_are_any(
    console: Console, db: psycopg.Connection[Any]
) -> None:
    bob = console("bob")
    db.execute("INSERT INTO taskd.notifications (task_id, url, event, status)"
               " VALUES (1, 'http://127.0.0.1:9/', 'failed', 'delivered')")
    assert 'id="notifications"' not in bob.get("/console/overview").text  # all delivered
    db.execute("INSERT INTO taskd.notifications (task_id, url, event, status, created_at)"
               " VALUES (1, 'http://127.0.0.1:9/', 'failed', 'pending', now() - interval '5 min'),"
               " (2, 'http://127.0.0.1:9/', 'completed', 'pending', now()),"
               " (3, 'http://127.0.0.1:9/', 'failed', 'dead', now())")
    page = bob.get("/console/overview").text
    table = re.search(r'<table id="notifications">.*?</table>', page, re.S)
    assert table is not None, page
    cells = re.findall(r'<td class="num">([^<]*)</td>', table[0])
    assert cells[:2] == ["2", "1"]
    assert re.fullmatch(r"5\.\d min", cells[2]), cells
