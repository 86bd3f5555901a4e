"""Helpers of the console's tests: sign in over HTTP, arrange failed tasks in the database."""

from __future__ import annotations

import re
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

from taskd.api import mint_token
from taskd.settings import ApiSettings

_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on the page."""
    found = _CSRF.search(html)
    assert found, "no form with a CSRF token on the page"
    return found[1]


def sign_in(base_url: str, settings: ApiSettings, user: str, *, admin: bool = False,
            ttl: float = 600) -> httpx.Client:
    """A client signed in to the console as ``user`` (cookies kept, redirects not followed)."""
    client = httpx.Client(base_url=base_url, timeout=30)
    form = client.get("/console/login")
    assert form.status_code == 200, form.text
    token = mint_token(settings, user, admin=admin, ttl=ttl)
    done = client.post("/console/login", data={"csrf": csrf_of(form.text), "token": token})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/console/overview"
    return client


def submit(conn: psycopg.Connection[Any], *, queue: str = "standard", kind: str = "noop",
           n: int = 1, user: str | None = None, priority: int = 0,
           params: dict[str, Any] | None = None, payload: dict[str, Any] | None = None) -> int:
    """A task of ``n`` subtasks through taskd.submit_task(_for_user); returns its id."""
    payloads = Jsonb([dict(payload or {"n": 0}, n=i) for i in range(n)])
    if user is None:
        row = conn.execute(
            "SELECT taskd.submit_task(queue => %s, kind => %s, payloads => %s, "
            "priority => %s, params => %s)",
            (queue, kind, payloads, priority, Jsonb(params or {}))).fetchone()
    else:
        row = conn.execute(
            "SELECT taskd.submit_task_for_user(user_id => %s, queue => %s, kind => %s, "
            "payloads => %s, priority => %s, params => %s)",
            (user, queue, kind, payloads, priority, Jsonb(params or {}))).fetchone()
    assert row is not None
    return int(row[0])


def fail(conn: psycopg.Connection[Any], task_id: int, *, error_type: str = "ValueError",
         message: str = "boom", stack: str = "Traceback (most recent call last):\n  boom") -> None:
    """Fail the task's subtasks as the completer does after the last attempt: the subtask's
    error and its error_logs row, at one database time."""
    error = f"{error_type}: {message}" if message else error_type
    with conn.transaction():
        conn.execute(
            "UPDATE taskd.subtasks s SET status = 'failed', error = %s, attempt = max_attempts,"
            " started_at = now(), completed_at = now(), updated_at = now()"
            "  FROM taskd.tasks t WHERE t.id = %s AND s.id BETWEEN t.first_subtask_id AND"
            " t.last_subtask_id AND s.task_id = t.id", (error, task_id))
        conn.execute(
            "INSERT INTO taskd.error_logs AS e (error_type, error_message, count, stack_trace,"
            " queue, kind) SELECT %s, %s, 1, %s, queue, kind FROM taskd.tasks WHERE id = %s"
            " ON CONFLICT (error_type, error_message) DO UPDATE SET count = e.count + 1,"
            " stack_trace = excluded.stack_trace, last_occurred_at = excluded.last_occurred_at",
            (error_type, message, stack, task_id))


def status_of(conn: psycopg.Connection[Any], task_id: int) -> str:
    row = conn.execute("SELECT status FROM taskd.tasks WHERE id = %s", (task_id,)).fetchone()
    assert row is not None
    return str(row[0])
