"""The console's pages: a Starlette app mounted by :func:`taskd.api.app.create_app` at
``/console``, rendering Jinja2 templates; htmx (vendored in ``static/``) only refreshes the
overview, so every page and form works with JavaScript off.

Who sees what: any valid API token signs in and reads everything, except that a non-admin
sees nothing of another user's task beyond its counters (no params, payload, state, result,
error or stack trace). Only ``role: admin`` acts; each action has a confirmation page that
says how many rows it touches, is a POST with the session's CSRF token, and is written to the
audit log with it (:mod:`taskd.queue.console`).

Over 400 lines on purpose: the console is one small app, and each page's route sits beside the
confirmation and the POST that act on what it shows, so that every check (role, CSRF, tenant)
is read in one place; its SQL, filters and session are modules of their own.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskd.api.auth import Principal
from taskd.api.console.filters import (
    FILTERS,
    SORTS,
    FilterError,
    TaskQuery,
    parse_filter,
    parse_task_query,
)
from taskd.api.console.session import Session, Sessions
from taskd.errors import (
    DatabaseUnavailable,
    InvalidInput,
    NothingToRetry,
    QueueNotFound,
    TaskFinished,
    TaskNotFound,
)
from taskd.queue import console as db
from taskd.queue.controls import list_queue_controls
from taskd.queue.status import TASK_STATUSES
from taskd.queue.store import Store
from taskd.queue.tasks import check_priority
from taskd.settings import QUEUE_NAME_PATTERN, Settings
from taskd.types import Task

log = logging.getLogger(__name__)

PAGE_SIZE = 50
SUBTASK_PAGE = 100
REFRESH_SECONDS = 3
MAX_ID = 2**63 - 1
# No inline script or style anywhere: scripts and styles come from /console/static only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]

Handler = Callable[[Request], Awaitable[Response]]


class SecurityHeaders:
    """The CSP and its companions on every console response; pages are not cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = "/static/" in scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += _HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if value else "—"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    return _age((end - start).total_seconds())


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _environment() -> Environment:
    folder = resources.files("taskd.api.console").joinpath("templates")
    env = Environment(loader=FileSystemLoader(str(folder)),
                      autoescape=select_autoescape(["html"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(age=_age, when=_when, json=_json)
    env.globals.update(duration=_duration, statuses=TASK_STATUSES, sorts=SORTS,
                       refresh_seconds=REFRESH_SECONDS)
    return env


class Console:
    """The pages, over one store and the API's settings."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.sessions = Sessions(settings.api)
        self.env = _environment()

    # -- rendering --------------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200,
               session: Session | None = None, **context: Any) -> HTMLResponse:
        csrf = self.sessions.csrf_token(session) if session else ""
        html = self.env.get_template(template).render(
            request=request, session=session, csrf=csrf,
            user=session.principal if session else None, **context)
        return HTMLResponse(html, status_code=status)

    def message(self, request: Request, session: Session | None, status: int, title: str,
                text: str, back: str | None = None) -> HTMLResponse:
        return self.render(request, "message.html", status, session, title=title,
                           text=text, back=back)

    # -- access -----------------------------------------------------------------------------

    def page(self, handler: Callable[[Request, Session], Awaitable[Response]]) -> Handler:
        """A page for signed-in operators; others go to the sign-in page (or get 401 when
        htmx asks for a fragment)."""

        async def endpoint(request: Request) -> Response:
            session = self.sessions.session(request)
            if session is None:
                if request.headers.get("hx-request"):
                    return Response("signed out", status_code=401)
                return RedirectResponse("/console/login", status_code=303)
            try:
                return await handler(request, session)
            except DatabaseUnavailable:
                return self.message(request, session, 503, "Database unavailable",
                                    "The database did not answer; try again in a moment.")

        return endpoint

    def action(self, handler: Callable[[Request, Session, FormData], Awaitable[Response]],
               ) -> Handler:
        """A POST that changes something: signed in (401), the form's CSRF token (403), and
        the admin role (403), checked in that order before ``handler`` runs."""

        async def endpoint(request: Request, session: Session) -> Response:
            form = await request.form()
            token = form.get("csrf")
            if not self.sessions.csrf_ok(session, token if isinstance(token, str) else None):
                return self.message(request, session, 403, "Forbidden",
                                    "This form's CSRF token is missing or wrong: reload the "
                                    "page and try again.")
            if not session.principal.is_admin:
                return self.message(request, session, 403, "Forbidden",
                                    "Only the admin role can change anything here.")
            return await handler(request, session, form)

        return self.page(endpoint)

    # -- sign-in ----------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        token = request.query_params.get("token", "")
        response = HTMLResponse("")
        nonce = self.sessions.login_nonce(request, response)
        page = self.render(request, "login.html", token=token, login_csrf=nonce,
                           error=None)
        page.raw_headers += [h for h in response.raw_headers if h[0] == b"set-cookie"]
        return page

    async def login(self, request: Request) -> Response:
        form = await request.form()
        sent = form.get("csrf")
        token = form.get("token")
        token = token.strip() if isinstance(token, str) else ""
        if not self.sessions.login_ok(request, sent if isinstance(sent, str) else None):
            return self.message(request, None, 403, "Forbidden",
                                "The sign-in form expired; open the sign-in page again.",
                                back="/console/login")
        session = self.sessions.verify(token)
        if session is None:
            response = HTMLResponse("")
            nonce = self.sessions.login_nonce(request, response)
            page = self.render(request, "login.html", 401, token="", login_csrf=nonce,
                               error="That token is not valid here: it is malformed, "
                                     "expired, or signed with another key.")
            page.raw_headers += [h for h in response.raw_headers if h[0] == b"set-cookie"]
            return page
        signed_in = RedirectResponse("/console/overview", status_code=303)
        self.sessions.sign_in(signed_in, request, session)
        return signed_in

    async def logout(self, request: Request, session: Session) -> Response:
        form = await request.form()
        token = form.get("csrf")
        if not self.sessions.csrf_ok(session, token if isinstance(token, str) else None):
            return self.message(request, session, 403, "Forbidden", "Wrong CSRF token.")
        response = RedirectResponse("/console/login", status_code=303)
        self.sessions.sign_out(response, request)
        return response

    # -- overview ---------------------------------------------------------------------------

    async def overview(self, request: Request, session: Session) -> Response:
        data = await db.overview(self.store, dead_after=self.settings.executor_dead_after)
        return self.render(request, "overview.html", session=session, data=data)

    async def overview_live(self, request: Request, session: Session) -> Response:
        data = await db.overview(self.store, dead_after=self.settings.executor_dead_after)
        return self.render(request, "overview_tables.html", session=session, data=data)

    # -- tasks ------------------------------------------------------------------------------

    @staticmethod
    def visible(user: Principal, task: Task) -> bool:
        """Whether ``user`` may see the task's params, payloads, results and errors."""
        return user.is_admin or task.user_id is None or task.user_id == user.user_id

    async def tasks(self, request: Request, session: Session) -> Response:
        try:
            query = parse_task_query(request.query_params.multi_items())
        except FilterError as exc:
            return self.render(request, "tasks.html", 400, session, query=TaskQuery(
                filter=db.TaskFilter()), tasks=[], next_link=None, error=str(exc))
        tasks = await db.list_tasks(self.store, query.filter, sort=query.sort,
                                    after=query.after, limit=PAGE_SIZE)
        next_link = None
        if len(tasks) == PAGE_SIZE:
            last = tasks[-1]
            cursor = (f"{last.priority}:{last.id}" if query.sort == "priority"
                      else str(last.id))
            next_link = "/console/tasks?" + query.link(after=cursor)
        bulk = urlencode([(n, v) for n, v in query.given if n != "status"])
        return self.render(request, "tasks.html", session=session, query=query, tasks=tasks,
                           next_link=next_link, error=None, bulk=bulk,
                           visible=lambda t: self.visible(session.principal, t))

    async def _task_or_404(self, request: Request, session: Session,
                           ) -> tuple[Task | None, Response | None]:
        raw = request.path_params["task_id"]
        if not raw.isdigit() or not 0 < int(raw) <= MAX_ID:
            return None, self.message(request, session, 404, "Not found",
                                      f"{raw!r} is not a task id.", back="/console/tasks")
        try:
            return await db.get_task(self.store, int(raw)), None
        except TaskNotFound:
            return None, self.message(request, session, 404, "Not found",
                                      f"Task {raw} does not exist (or was deleted by "
                                      "retention).", back="/console/tasks")

    async def task(self, request: Request, session: Session) -> Response:
        task, missing = await self._task_or_404(request, session)
        if task is None:
            assert missing is not None
            return missing
        raw_after = request.query_params.get("after", "0")
        unknown = set(request.query_params) - {"after"}
        if unknown or not raw_after.isdigit() or len(raw_after) > 18:
            return self.message(request, session, 400, "Bad request",
                                "The task page takes only 'after', a subtask id.",
                                back=f"/console/tasks/{task.id}")
        subtasks = await db.list_subtasks(self.store, task.id, after_id=int(raw_after),
                                          limit=SUBTASK_PAGE)
        next_link = (f"/console/tasks/{task.id}?after={subtasks[-1].id}"
                     if len(subtasks) == SUBTASK_PAGE else None)
        return self.render(request, "task.html", session=session, task=task,
                           subtasks=subtasks, next_link=next_link,
                           visible=self.visible(session.principal, task))

    # -- errors -----------------------------------------------------------------------------

    async def errors(self, request: Request, session: Session) -> Response:
        before = None
        raw = request.query_params.get("before")
        if set(request.query_params) - {"before"}:
            return self.message(request, session, 400, "Bad request",
                                "The errors page takes only 'before' (its next-page link).",
                                back="/console/errors")
        if raw:
            at, _, ident = raw.rpartition("~")
            try:
                before = (datetime.fromisoformat(at), int(ident))
            except ValueError:
                return self.message(request, session, 400, "Bad request",
                                    f"{raw!r} is not a page of the errors list.",
                                    back="/console/errors")
        entries = await db.list_errors(self.store, before=before, limit=PAGE_SIZE)
        next_link = None
        if len(entries) == PAGE_SIZE:
            last = entries[-1]
            next_link = "/console/errors?" + urlencode(
                {"before": f"{last.last_occurred_at.isoformat()}~{last.id}"})
        return self.render(request, "errors.html", session=session, entries=entries,
                           next_link=next_link)

    async def error(self, request: Request, session: Session) -> Response:
        raw = request.path_params["error_id"]
        entry = None
        if raw.isdigit() and 0 < int(raw) <= MAX_ID:
            entry = await db.get_error(self.store, int(raw))
        if entry is None:
            return self.message(request, session, 404, "Not found",
                                f"No error {raw!r} in the error log.", back="/console/errors")
        failed = await db.error_subtasks(self.store, entry.id, limit=PAGE_SIZE)
        return self.render(request, "error.html", session=session, entry=entry,
                           failed=failed, limit=PAGE_SIZE)

    async def audit(self, request: Request, session: Session) -> Response:
        entries = await db.audit_log(self.store, limit=200)
        return self.render(request, "audit.html", session=session, entries=entries)

    # -- actions on one task ----------------------------------------------------------------

    async def confirm_task(self, request: Request, session: Session) -> Response:
        if not session.principal.is_admin:
            return self.message(request, session, 403, "Forbidden",
                                "Only the admin role can change anything here.")
        task, missing = await self._task_or_404(request, session)
        if task is None:
            assert missing is not None
            return missing
        action = request.query_params.get("action", "")
        unfinished = task.total - task.completed - task.failed - task.cancelled
        back = f"/console/tasks/{task.id}"
        if action == "retry":
            if task.failed == 0:
                return self.message(request, session, 409, "Nothing to retry",
                                    f"Task {task.id} has no failed subtasks.", back=back)
            text = (f"Retry task {task.id}: {task.failed} failed subtask(s) go back to "
                    "pending with fresh attempts.")
        elif action == "cancel":
            if task.status in ("completed", "failed", "cancelled"):
                return self.message(request, session, 409, "Already ended",
                                    f"Task {task.id} has already ended ({task.status}).",
                                    back=back)
            text = (f"Cancel task {task.id}: up to {unfinished} unfinished subtask(s) are "
                    "cancelled (running ones are asked to stop).")
        elif action == "priority":
            raw = request.query_params.get("priority", "").strip()
            try:
                priority = int(raw)
                check_priority(priority)
            except (ValueError, InvalidInput):
                return self.message(request, session, 400, "Bad priority",
                                    f"{raw!r} is not a priority in -1000..1000.", back=back)
            text = (f"Set the priority of task {task.id} from {task.priority} to {priority}: "
                    f"up to {unfinished} unfinished subtask(s) move in the claim order.")
            return self.render(request, "confirm.html", session=session, text=text,
                               post=f"/console/tasks/{task.id}/priority",
                               fields={"priority": str(priority)}, back=back,
                               button="Set priority")
        else:
            return self.message(request, session, 400, "Bad request",
                                "action must be retry, cancel or priority.", back=back)
        return self.render(request, "confirm.html", session=session, text=text,
                           post=f"/console/tasks/{task.id}/{action}", fields={}, back=back,
                           button=action.capitalize())

    async def retry_task(self, request: Request, session: Session, form: FormData) -> Response:
        task_id = _task_id(request)
        back = f"/console/tasks/{task_id}"
        try:
            n = await db.retry_task(self.store, task_id, actor=session.principal.user_id)
        except (TaskNotFound, NothingToRetry) as exc:
            return self.message(request, session, 409, "Nothing done", str(exc), back=back)
        return self.message(request, session, 200, "Retried",
                            f"{n} failed subtask(s) of task {task_id} are pending again.",
                            back=back)

    async def cancel_task(self, request: Request, session: Session, form: FormData,
                          ) -> Response:
        task_id = _task_id(request)
        back = f"/console/tasks/{task_id}"
        try:
            cancelled, stopping = await db.cancel_task(self.store, task_id,
                                                       actor=session.principal.user_id)
        except (TaskNotFound, TaskFinished) as exc:
            return self.message(request, session, 409, "Nothing done", str(exc), back=back)
        return self.message(request, session, 200, "Cancelled",
                            f"{cancelled} subtask(s) of task {task_id} cancelled, {stopping} "
                            "running one(s) asked to stop.", back=back)

    async def priority_task(self, request: Request, session: Session, form: FormData,
                            ) -> Response:
        task_id = _task_id(request)
        back = f"/console/tasks/{task_id}"
        raw = form.get("priority")
        try:
            priority = int(raw) if isinstance(raw, str) else None
            if priority is None:
                raise ValueError
            moved = await db.set_priority(self.store, task_id, priority,
                                          actor=session.principal.user_id)
        except (ValueError, InvalidInput):
            return self.message(request, session, 400, "Bad priority",
                                f"{raw!r} is not a priority in -1000..1000.", back=back)
        except (TaskNotFound, TaskFinished) as exc:
            return self.message(request, session, 409, "Nothing done", str(exc), back=back)
        return self.message(request, session, 200, "Priority changed",
                            f"Task {task_id} now has priority {priority}; {moved} "
                            "subtask(s) moved.", back=back)

    # -- pause and resume a queue -----------------------------------------------------------

    _QUEUE_ACTIONS = {"pause": "pause_queue", "resume": "resume_queue"}

    def _unknown_queue(self, request: Request, session: Session, queue: str) -> Response:
        return self.message(request, session, 404, "Unknown queue",
                            f"There is no queue {queue!r}: it is not in the settings and no "
                            "daemon has served it. Nothing was changed.",
                            back="/console/overview")

    async def confirm_queue(self, request: Request, session: Session) -> Response:
        if not session.principal.is_admin:
            return self.message(request, session, 403, "Forbidden",
                                "Only the admin role can change anything here.")
        queue = request.path_params["queue"]
        action = request.query_params.get("action", "")
        back = "/console/overview"
        if action not in self._QUEUE_ACTIONS:
            return self.message(request, session, 400, "Bad request",
                                "action must be pause or resume.", back=back)
        if not re.fullmatch(QUEUE_NAME_PATTERN, queue):
            return self._unknown_queue(request, session, queue)
        found = [c for c in await list_queue_controls(self.store) if c.queue == queue]
        if not found and queue not in self.settings.queues:
            return self._unknown_queue(request, session, queue)
        paused = bool(found and found[0].paused)
        if action == "pause":
            if paused:
                return self.message(request, session, 409, "Already paused",
                                    f"Queue {queue!r} is paused already: nothing to do.",
                                    back=back)
            text = (f"Pause queue {queue!r} on every executor: from now on no executor "
                    "starts its subtasks; running ones finish, submissions are still "
                    "accepted, and it stays paused across restarts until resumed.")
        else:
            if not paused:
                return self.message(request, session, 409, "Not paused",
                                    f"Queue {queue!r} is not paused: nothing to do.",
                                    back=back)
            text = (f"Resume queue {queue!r}: every executor that serves it is woken and "
                    "starts its waiting subtasks again at once.")
        return self.render(request, "confirm.html", session=session, text=text,
                           post=f"/console/queues/{queue}/{action}", fields={}, back=back,
                           button=f"{action.capitalize()} {queue}")

    async def change_queue(self, request: Request, session: Session, form: FormData,
                           ) -> Response:
        queue = request.path_params["queue"]
        action = request.path_params["action"]
        back = "/console/overview"
        if action not in self._QUEUE_ACTIONS:
            return self.message(request, session, 404, "Not found", "No such action.")
        if not re.fullmatch(QUEUE_NAME_PATTERN, queue):
            return self._unknown_queue(request, session, queue)
        try:
            changed = await db.change_queue(
                self.store, "pause_queue" if action == "pause" else "resume_queue", queue,
                actor=session.principal.user_id, configured=self.settings.queues)
        except QueueNotFound:
            return self._unknown_queue(request, session, queue)
        if not changed:
            state = "paused already" if action == "pause" else "not paused"
            return self.message(request, session, 409, "Nothing done",
                                f"Queue {queue!r} was {state}: nothing was changed.",
                                back=back)
        done = ("paused: no executor starts its subtasks until it is resumed"
                if action == "pause" else "resumed: its executors claim from it again")
        return self.message(request, session, 200, f"Queue {action}d",
                            f"Queue {queue!r} is {done}.", back=back)

    # -- bulk actions -----------------------------------------------------------------------

    _BULK = {"retry_failed": ("failed", "Retry every failed task"),
             "cancel_pending": ("pending", "Cancel every pending task")}

    async def confirm_bulk(self, request: Request, session: Session) -> Response:
        if not session.principal.is_admin:
            return self.message(request, session, 403, "Forbidden",
                                "Only the admin role can change anything here.")
        action = request.query_params.get("action", "")
        if action not in self._BULK:
            return self.message(request, session, 400, "Bad request",
                                "action must be retry_failed or cancel_pending.",
                                back="/console/tasks")
        status, title = self._BULK[action]
        pairs = [(n, v) for n, v in request.query_params.multi_items() if n != "action"]
        try:
            flt, given = parse_filter(pairs, allowed=[f for f in FILTERS if f != "status"])
        except FilterError as exc:
            return self.message(request, session, 400, "Bad filter", str(exc),
                                back="/console/tasks")
        flt = db.TaskFilter(**{**flt.params(), "status": status})
        count = await db.count_bulk(self.store, flt)
        back = "/console/tasks?" + urlencode([*given, ("status", status)])
        if count.tasks == 0:
            return self.message(request, session, 200, "Nothing to do",
                                f"No {status} task matches this filter: nothing would be "
                                "done.", back=back)
        text = (f"{title} matching {_describe(given)}: {count.tasks} task(s) with "
                f"{count.subtasks} {status} subtask(s), in batches of {db.BULK_BATCH} "
                f"tasks, recorded as one operation. Tasks submitted from now on are not "
                "touched.")
        return self.render(request, "confirm.html", session=session, text=text,
                           post=f"/console/bulk/{action}",
                           fields={**dict(given), "max_id": str(count.max_id)}, back=back,
                           button=title)

    async def bulk(self, request: Request, session: Session, form: FormData) -> Response:
        action = request.path_params["action"]
        if action not in self._BULK:
            return self.message(request, session, 404, "Not found", "No such action.")
        status, _ = self._BULK[action]
        pairs = [(n, v) for n, v in form.multi_items()
                 if n not in ("csrf", "max_id") and isinstance(v, str)]
        raw_max = form.get("max_id")
        try:
            flt, given = parse_filter(pairs, allowed=[f for f in FILTERS if f != "status"])
            if not isinstance(raw_max, str) or not raw_max.isdigit() or len(raw_max) > 18:
                raise FilterError("max_id (from the confirmation page) is missing")
        except FilterError as exc:
            return self.message(request, session, 400, "Bad filter", str(exc),
                                back="/console/tasks")
        flt = db.TaskFilter(**{**flt.params(), "status": status})
        back = "/console/tasks?" + urlencode([*given, ("status", status)])
        count = await db.count_bulk(self.store, flt, max_id=int(raw_max))
        if count.tasks == 0:
            return self.message(request, session, 200, "Nothing to do",
                                f"No {status} task matches this filter: nothing was done.",
                                back=back)
        report = await db.bulk_action(self.store, action, flt,
                                      max_id=int(raw_max), actor=session.principal.user_id)
        verb = "retried" if action == "retry_failed" else "cancelled"
        return self.message(
            request, session, 200, "Done",
            f"{report.tasks} task(s) {verb} ({report.subtasks} subtask(s)) in "
            f"{report.batches} batch(es); audit record #{report.audit_id}.", back=back)

    async def root(self, request: Request) -> Response:
        return RedirectResponse("/console/overview", status_code=303)


def _task_id(request: Request) -> int:
    """The path's task id; an id no task can have is a task that does not exist."""
    task_id = int(request.path_params["task_id"])
    return task_id if 0 < task_id <= MAX_ID else 0


def _describe(given: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{n} = {v!r}" for n, v in given) or "no filter (every queue)"


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    text = "No such page." if status == 404 else "This request cannot be answered."
    return HTMLResponse(f"<!doctype html><title>{status}</title><p>{text}</p>",
                        status_code=status)


def create_console(settings: Settings, store: Store) -> ASGIApp:
    """The console as an ASGI app to mount at ``/console``."""
    c = Console(settings, store)
    static = resources.files("taskd.api.console").joinpath("static")
    routes = [
        Route("/", c.root),
        Route("/login", c.login_form, methods=["GET"]),
        Route("/login", c.login, methods=["POST"]),
        Route("/logout", c.page(c.logout), methods=["POST"]),
        Route("/overview", c.page(c.overview)),
        Route("/overview/live", c.page(c.overview_live)),
        Route("/tasks", c.page(c.tasks)),
        Route("/tasks/{task_id}", c.page(c.task)),
        Route("/tasks/{task_id}/confirm", c.page(c.confirm_task)),
        Route("/tasks/{task_id:int}/retry", c.action(c.retry_task), methods=["POST"]),
        Route("/tasks/{task_id:int}/cancel", c.action(c.cancel_task), methods=["POST"]),
        Route("/tasks/{task_id:int}/priority", c.action(c.priority_task), methods=["POST"]),
        Route("/errors", c.page(c.errors)),
        Route("/errors/{error_id}", c.page(c.error)),
        Route("/audit", c.page(c.audit)),
        Route("/queues/{queue}/confirm", c.page(c.confirm_queue)),
        Route("/queues/{queue}/{action}", c.action(c.change_queue), methods=["POST"]),
        Route("/bulk/confirm", c.page(c.confirm_bulk)),
        Route("/bulk/{action}", c.action(c.bulk), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _not_found})
    return SecurityHeaders(app)
