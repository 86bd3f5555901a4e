"""The console in a real headless Chromium (Debian's package, driven by Playwright's Python API;
never `playwright install`): an admin signs in, finds a failed task, reads its error and
bulk-retries the failed tasks of a filter, which a real ``taskd run`` then completes; a
read-only operator sees no action button and a forged POST gets 403; the pages work with
JavaScript off (an admin also pauses and resumes a queue there by clicking), and refresh
themselves with it on, with no CSP violation.

Screenshots of each page go to ``artifacts/console/`` (gitignored). Without Chromium these
tests skip locally and fail in CI (CI=true): .ci/run installs it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from taskd.api import RunningApi, mint_token, serve_in_thread
from taskd.settings import Settings
from tests.integration.api_support import make_settings
from tests.system.daemons import daemons, scalar, wait_for

playwright = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, BrowserContext, Page, expect  # noqa: E402

pytestmark = [pytest.mark.system, pytest.mark.slow]

# The package's real binary: /usr/bin/chromium is a shell wrapper around it.
CHROMIUM = Path("/usr/lib/chromium/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "console"
HANDLERS = json.dumps({"broken_while": "tests.handlers_for_tests:broken_while"})
# The machine is shared and loaded: generous bounds, polled, never slept.
WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def api(settings: Settings, database_url: str) -> Iterator[RunningApi]:
    with serve_in_thread(settings, database_url) as running:
        yield running


@pytest.fixture
def context(browser: Browser, request: pytest.FixtureRequest) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies), JavaScript on unless the test is parametrized
    with ``javascript=False`` through ``indirect``."""
    javascript = getattr(request, "param", True)
    ctx = browser.new_context(java_script_enabled=javascript,
                              viewport={"width": 1400, "height": 900})
    yield ctx
    ctx.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, api: RunningApi, settings: Settings, user: str, *,
            admin: bool = False) -> None:
    page.goto(f"{api.url}/console/login")
    page.fill("#token", mint_token(settings.api, user, admin=admin, ttl=900))
    page.click("#sign-in")
    expect(page).to_have_url(f"{api.url}/console/overview")
    expect(page.locator("#who")).to_have_text(user)


def submit(url: str, user: str, payloads: list[dict[str, Any]], kind: str = "broken_while",
           ) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT taskd.submit_task_for_user(user_id => %s, queue => 'standard', "
            "kind => %s, payloads => %s)", (user, kind, Jsonb(payloads))).fetchone()
    assert row is not None
    return int(row[0])


def status(url: str, task_id: int) -> str:
    return str(scalar(url, "SELECT status FROM taskd.tasks WHERE id = %s", task_id))


def test_admin_finds_a_failure_reads_it_and_bulk_retries_the_filter_to_completion(
    api: RunningApi, settings: Settings, database_url: str, context: BrowserContext,
) -> None:
    with tempfile.NamedTemporaryFile(prefix="taskd-console-bug-") as bug:
        alices = [submit(database_url, "alice", [{"path": bug.name, "n": i}]) for i in range(3)]
        mallorys = submit(database_url, "mallory", [{"path": bug.name, "n": 9}])
        with daemons(database_url, 1, TASKD_HANDLERS=HANDLERS):
            wait_for(lambda: all(status(database_url, t) == "failed"
                                 for t in [*alices, mallorys]),
                     timeout=60, message="the four tasks failed")
            page = context.new_page()
            sign_in(page, api, settings, "root", admin=True)
            expect(page.locator("#queues")).to_contain_text("standard")
            expect(page.locator("#queues tbody tr").first.locator("td").nth(6)).to_have_text(
                "4")  # failed in the last hour
            executor = page.locator("#executors tbody tr").first
            expect(executor).to_contain_text("running")
            expect(executor).to_contain_text("standard 0 / 10")
            shot(page, "overview")

            page.click("text=Tasks")
            page.select_option("#f-status", "failed")
            page.click("#apply")
            rows = page.locator("#tasks tbody tr")
            expect(rows).to_have_count(4)
            shot(page, "tasks-failed")

            page.click(f'#tasks a[href="/console/tasks/{alices[0]}"]')
            expect(page.locator("#task-status")).to_have_text("failed")
            error = page.locator("#subtasks pre.error-text").first
            expect(error).to_contain_text(f"PermanentError: broken: {bug.name} exists")
            expect(error).to_contain_text("<b>not bold</b>")  # shown as text, not markup
            expect(page.locator("#subtasks pre.stack").first).to_contain_text("Traceback")
            shot(page, "task-failed")

            page.goto(f"{api.url}/console/errors")
            page.click("#errors tbody a")
            expect(page.locator("#failed tbody tr")).to_have_count(4)
            shot(page, "error")

            # The bug is fixed; retry what failed for alice, and only that.
            bug.close()
            page.goto(f"{api.url}/console/tasks?user=alice&status=failed")
            expect(rows).to_have_count(3)
            page.click("#bulk-retry")
            expect(page.locator("#confirm-text")).to_contain_text(
                "3 task(s) with 3 failed subtask(s)")
            shot(page, "bulk-confirm")
            page.click("#confirm")
            expect(page.locator("#message")).to_contain_text("3 task(s) retried")
            shot(page, "bulk-done")

            page.goto(f"{api.url}/console/tasks?user=alice&status=completed")

            def completed() -> bool:
                page.reload()
                return bool(page.locator("#tasks tbody tr.status-completed").count() == 3)

            wait_for(completed, timeout=60, interval=0.5, message="alice's tasks completed")
            shot(page, "tasks-completed")
            assert status(database_url, mallorys) == "failed"
            page.goto(f"{api.url}/console/audit")
            expect(page.locator("#audit tbody tr")).to_have_count(1)
            expect(page.locator("#audit")).to_contain_text("retry_failed")
            shot(page, "audit")


def test_read_only_operator_sees_no_action_and_a_forged_post_is_refused(
    api: RunningApi, settings: Settings, database_url: str, context: BrowserContext,
) -> None:
    task = submit(database_url, "alice", [{"n": 1}], kind="noop")
    page = context.new_page()
    sign_in(page, api, settings, "viewer")
    expect(page.locator("#role")).to_have_text("read-only")
    page.goto(f"{api.url}/console/tasks")
    expect(page.locator("#tasks tbody tr")).to_have_count(1)
    expect(page.locator("#bulk")).to_have_count(0)
    page.click(f'#tasks a[href="/console/tasks/{task}"]')
    expect(page.locator("#task-status")).to_have_text("pending")
    expect(page.locator("#actions")).to_have_count(0)
    expect(page.locator("#subtasks")).to_contain_text("another user's task")
    shot(page, "read-only-task")
    # A forged POST from this signed-in browser, with its cookie and its valid CSRF token.
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    forged = page.request.post(f"{api.url}/console/tasks/{task}/cancel",
                               form={"csrf": csrf or ""})
    assert forged.status == 403
    assert "admin role" in forged.text()
    assert status(database_url, task) == "pending"
    assert scalar(database_url, "SELECT count(*) FROM taskd.console_audit") == 0


@pytest.mark.parametrize("context", [False], indirect=True, ids=["javascript-off"])
def test_pages_render_with_javascript_disabled(
    api: RunningApi, settings: Settings, database_url: str, context: BrowserContext,
) -> None:
    task = submit(database_url, "alice", [{"n": 1}, {"n": 2}], kind="noop")
    page = context.new_page()
    sign_in(page, api, settings, "root", admin=True)  # a plain form post
    expect(page.locator("#queues")).to_contain_text("standard")
    shot(page, "overview-no-js")
    page.goto(f"{api.url}/console/tasks?status=pending")
    expect(page.locator("#tasks tbody tr")).to_have_count(1)
    page.click(f'#tasks a[href="/console/tasks/{task}"]')
    expect(page.locator("#subtasks tbody tr:not(.detail)")).to_have_count(2)
    page.fill("#new-priority", "5")
    page.click("#change-priority")
    expect(page.locator("#confirm-text")).to_contain_text("to 5")
    page.click("#confirm")
    expect(page.locator("#message")).to_contain_text("priority 5")
    shot(page, "task-no-js")
    # Pause the queue from the overview by clicking, then resume it.
    page.goto(f"{api.url}/console/overview")
    page.click("#pause-standard")
    expect(page.locator("#confirm-text")).to_contain_text("Pause queue 'standard'")
    page.click("#confirm")
    expect(page.locator("#message")).to_contain_text("is paused")
    assert scalar(database_url, "SELECT paused FROM taskd.queue_controls"
                                " WHERE queue = 'standard'") is True
    page.goto(f"{api.url}/console/overview")
    expect(page.locator("#queue-standard")).to_contain_text("paused by root since")
    shot(page, "overview-paused-no-js")
    page.click("#resume-standard")
    expect(page.locator("#confirm-text")).to_contain_text("Resume queue 'standard'")
    page.click("#confirm")
    expect(page.locator("#message")).to_contain_text("resumed")
    assert scalar(database_url, "SELECT paused FROM taskd.queue_controls"
                                " WHERE queue = 'standard'") is False


def test_the_overview_refreshes_itself_without_breaking_the_csp(
    api: RunningApi, settings: Settings, database_url: str, context: BrowserContext,
) -> None:
    violations: list[str] = []
    page = context.new_page()
    page.on("console", lambda m: violations.append(m.text)
            if re.search("Content Security Policy|Refused to", m.text) else None)
    sign_in(page, api, settings, "root", admin=True)
    expect(page.locator("#queues")).not_to_contain_text("standard")
    submit(database_url, "alice", [{"n": 1}], kind="noop")
    # htmx asks for the tables again every few seconds: the new queue appears unreloaded.
    with page.expect_response(re.compile(r"/console/overview/live$"), timeout=WAIT_MS):
        pass
    expect(page.locator("#queues")).to_contain_text("standard")
    shot(page, "overview-refreshed")
    assert violations == []


def test_script_in_a_filter_stays_text_in_the_browser(
    api: RunningApi, settings: Settings, database_url: str, context: BrowserContext,
) -> None:
    dialogs: list[str] = []
    page = context.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_in(page, api, settings, "root", admin=True)
    hostile = {"queue": "<script>alert('q')</script>", "kind": '"><img src=x onerror=alert(1)>',
               "user": "' OR 1=1 --"}
    page.goto(f"{api.url}/console/tasks")
    for name, value in hostile.items():
        page.fill(f"#f-{name}", value)
    page.click("#apply")
    expect(page.locator("#no-tasks")).to_be_visible()
    for name, value in hostile.items():
        expect(page.locator(f"#f-{name}")).to_have_value(value)
    page.goto(f"{api.url}/console/tasks?colour=red")
    expect(page.locator("#filter-error")).to_contain_text("unknown filter 'colour'")
    shot(page, "unknown-filter")
    assert dialogs == []
    assert page.locator("img[src=x]").count() == 0
