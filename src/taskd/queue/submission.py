"""The rules a submission must keep, checked before anything is written.

``taskd.submit_task`` repeats these checks for SQL clients; checking here first gives a precise
message naming the field without a round trip.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import psycopg

from taskd.errors import InvalidInput
from taskd.queue.connection import translate_error
from taskd.queue.queries import query
from taskd.settings import Settings
from taskd.types import NotifyRoute

QUEUE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
KIND_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
MAX_SUBTASKS = 100_000
# W3C trace context's traceparent (version 00 and later ones, which may only add fields after
# these four; the API and the Python client store only the four).
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
# The ends of a task a notification target may hear of, and the longest target URL.
NOTIFY_EVENTS = ("failed", "completed", "cancelled")
MAX_NOTIFY_URL_LENGTH = 2000


MAX_UNIQUE_KEY = 200
#: How long a unique key holds: while its task is unfinished, forever, or a period (an interval
#: such as "1 hour", seconds, or a timedelta).
UniqueScope = str | float | timedelta


@dataclass(frozen=True, slots=True)
class Submitted:
    """A submission's task: ``existing`` when its unique key returned a task that holds it."""

    task_id: int
    existing: bool = False


def unique_scope_text(unique_key: Any, unique_scope: Any) -> str | None:
    """Check a unique key and its scope; the scope as ``taskd.submit_task`` takes it.

    Raises :class:`InvalidInput` naming the field: a key of 1 to 200 characters of text; a
    scope of ``"unfinished"`` (the default), ``"forever"``, a PostgreSQL interval (``"1 hour"``),
    or a positive number of seconds or timedelta.
    """
    if unique_key is None:
        if unique_scope is not None:
            raise InvalidInput("unique_scope needs a unique_key", field="unique_scope")
        return None
    if not isinstance(unique_key, str) or not 1 <= len(unique_key) <= MAX_UNIQUE_KEY:
        size = len(unique_key) if isinstance(unique_key, str) else "not text"
        raise InvalidInput(f"unique_key is {size} characters; it must have 1 to "
                           f"{MAX_UNIQUE_KEY}", field="unique_key")
    if "\x00" in unique_key or not _encodes(unique_key):
        raise InvalidInput("unique_key must be valid UTF-8 text without NUL characters",
                           field="unique_key")
    if unique_scope is None:
        return None
    if isinstance(unique_scope, timedelta):
        unique_scope = unique_scope.total_seconds()
    if isinstance(unique_scope, bool):
        raise InvalidInput(f"unique_scope {unique_scope!r} is not a scope", field="unique_scope")
    if isinstance(unique_scope, (int, float)):
        if not 0 < unique_scope < 10 * 365 * 86400 * 100:
            raise InvalidInput(f"unique_scope {unique_scope!r} must be a positive number of "
                               "seconds", field="unique_scope")
        return f"{float(unique_scope)!r} seconds"
    if (not isinstance(unique_scope, str) or not 1 <= len(unique_scope) <= 100
            or "\x00" in unique_scope or not _encodes(unique_scope)):
        raise InvalidInput(f"unique_scope {unique_scope!r:.100} is not unfinished, forever or "
                           "an interval such as '1 hour'", field="unique_scope")
    return unique_scope


def valid_traceparent(value: str) -> bool:
    """True for a W3C traceparent that taskd stores (``submit_task`` checks the same): four
    lower-case hex fields, not version ff, neither id all zeros."""
    return (TRACEPARENT.match(value) is not None and not value.startswith("ff")
            and value[3:35] != "0" * 32 and value[36:52] != "0" * 16)


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}", field=what) from exc


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def validate_submission(
    queue: str,
    kind: str,
    payloads: Sequence[Any],
    *,
    name: str,
    priority: int,
    params: Any,
    user_id: str | None,
    max_attempts: int,
    delay: float,
    max_payload_bytes: int,
    traceparent: str | None = None,
) -> tuple[str, str]:
    """Check a submission against the documented rules; return (payloads, params) as JSON.

    Raises :class:`InvalidInput` naming the field. ``taskd.submit_task`` repeats these checks
    for SQL clients; doing them here gives a precise message without a round trip.
    """
    _check_fields(queue, kind, name=name, priority=priority, user_id=user_id,
                  max_attempts=max_attempts, delay=delay)
    _check_shapes(payloads, params)
    if traceparent is not None and (
        not isinstance(traceparent, str) or not valid_traceparent(traceparent)
    ):
        raise InvalidInput(f"traceparent {traceparent!r:.100} is not a W3C traceparent "
                           "(00-<32 hex>-<16 hex>-<2 hex>)", field="traceparent")
    params_json = _dumps(params, "params")
    payloads_json = _dumps(list(payloads), "payloads")
    # json.dumps escapes NUL as \u0000; only then is the slower exact walk needed.
    if "\\u0000" in payloads_json or "\\u0000" in params_json:
        for index, payload in enumerate(payloads):
            if _has_nul(payload):
                raise InvalidInput(f"payloads[{index}] contains a NUL character",
                                   field=f"payloads[{index}]")
        if _has_nul(params):
            raise InvalidInput("params contains a NUL character", field="params")
    # Cheap bound first: only a large total can hold one payload over the limit.
    if len(payloads_json) > max_payload_bytes:
        for index, payload in enumerate(payloads):
            size = len(_dumps(payload, f"payloads[{index}]").encode())
            if size > max_payload_bytes:
                raise InvalidInput(
                    f"payloads[{index}] is {size} bytes, larger than {max_payload_bytes}",
                    field=f"payloads[{index}]",
                )
    return payloads_json, params_json


def _check_fields(
    queue: Any, kind: Any, *, name: Any, priority: Any, user_id: Any, max_attempts: Any,
    delay: Any,
) -> None:
    """The scalar fields: names, numbers and texts."""
    if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
        raise InvalidInput(
            f"queue {queue!r} is not a valid queue name (^[a-z][a-z0-9_-]{{0,62}}$)",
            field="queue",
        )
    if not isinstance(kind, str) or not KIND_NAME.match(kind):
        raise InvalidInput(
            f"kind {kind!r} is not a valid kind (letters, digits, _ . : -, at most 200)",
            field="kind",
        )
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
        -1000 <= priority <= 1000
    ):
        raise InvalidInput(f"priority {priority!r} is outside -1000..1000", field="priority")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not (
        1 <= max_attempts <= 1000
    ):
        raise InvalidInput(f"max_attempts {max_attempts!r} is outside 1..1000",
                           field="max_attempts")
    if not isinstance(delay, (int, float)) or not (0 <= delay <= 10 * 365 * 86400):
        raise InvalidInput(f"delay {delay!r} must be 0 or more seconds", field="delay")
    for label, text in (("name", name), ("user_id", user_id)):
        if text is not None and (not isinstance(text, str) or "\x00" in text):
            raise InvalidInput(f"{label} must be text without NUL characters", field=label)
        if text is not None and not _encodes(text):
            # Lone surrogates: argv or JSON bytes that were not UTF-8.
            raise InvalidInput(f"{label} must be valid UTF-8 text", field=label)


def _check_shapes(payloads: Any, params: Any) -> None:
    """params is an object; payloads a non-empty list of objects, not too many."""
    if not isinstance(params, dict):
        raise InvalidInput("params must be a JSON object", field="params")
    if isinstance(payloads, (str, bytes, dict)) or not isinstance(payloads, Sequence):
        raise InvalidInput("payloads must be a list of JSON objects", field="payloads")
    if not payloads:
        raise InvalidInput("a task needs at least one subtask (payloads is empty)",
                           field="payloads")
    if len(payloads) > MAX_SUBTASKS:
        raise InvalidInput(f"payloads holds {len(payloads)} subtasks; at most {MAX_SUBTASKS}",
                           field="payloads")
    for index, payload in enumerate(payloads):
        if not isinstance(payload, dict):
            raise InvalidInput(f"payloads[{index}] is not a JSON object",
                               field=f"payloads[{index}]")


def check_notify_target(notify_url: str | None, notify_on: Sequence[str] | None) -> None:
    """The checks that need no database: a URL with scheme http or https and a host, no
    credentials, and known ends. The database adds its own (which http hosts are allowed)
    and raises the same way. Raises :class:`InvalidInput` naming the field."""
    if notify_url is None:
        if notify_on is not None:
            raise InvalidInput("notify_on needs a notify_url", field="notify_on")
        return
    if not isinstance(notify_url, str) or len(notify_url) > MAX_NOTIFY_URL_LENGTH:
        raise InvalidInput(
            f"notify_url must be a URL of at most {MAX_NOTIFY_URL_LENGTH} characters",
            field="notify_url")
    try:
        parts = urlsplit(notify_url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise InvalidInput(f"notify_url {notify_url!r:.100} is not a URL: {exc}",
                           field="notify_url") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput(
            f"notify_url {notify_url!r:.100} has scheme {parts.scheme or 'none'!r}; only https "
            "(or http to a private address when allowed)", field="notify_url")
    if not host or any(c.isspace() for c in notify_url):
        raise InvalidInput(f"notify_url {notify_url!r:.100} has no valid host",
                           field="notify_url")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(f"notify_url {notify_url!r:.100} carries credentials; the "
                           "signature authenticates taskd to the receiver", field="notify_url")
    if notify_on is not None and (
        isinstance(notify_on, str) or not notify_on
        or any(event not in NOTIFY_EVENTS for event in notify_on)
    ):
        raise InvalidInput(f"notify_on {notify_on!r:.100} must list one or more of "
                           f"{', '.join(NOTIFY_EVENTS)}", field="notify_on")


def routes_from_settings(settings: Settings) -> list[NotifyRoute]:
    """The routes the settings ask for, checked as a task's own target is."""
    routes = [NotifyRoute(name, q.notify_url, tuple(q.notify_on))
              for name, q in settings.queues.items() if q.notify_url is not None]
    n = settings.notifications
    if n.operator_url is not None:
        routes.append(NotifyRoute("*", n.operator_url, tuple(n.operator_on)))
    for route in routes:
        check_notify_target(route.url, route.notify_on)
    return routes
def prepare_submission(
    queue: str,
    kind: str,
    payloads: Sequence[Any],
    *,
    name: str = "",
    priority: int = 0,
    params: Any = None,
    user_id: str | None = None,
    max_attempts: int = 4,
    delay: float = 0.0,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    traceparent: str | None = None,
    unique_key: str | None = None,
    unique_scope: UniqueScope | None = None,
    after: Sequence[int] | None = None,
    notify_url: str | None = None,
    notify_on: Sequence[str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Check a submission; return the named query that makes it and its parameters.

    Raises :class:`InvalidInput` naming the field; nothing is sent then.
    """
    payloads_json, params_json = validate_submission(
        queue, kind, payloads, name=name, priority=priority,
        params={} if params is None else params, user_id=user_id,
        max_attempts=max_attempts, delay=delay, max_payload_bytes=max_payload_bytes,
        traceparent=traceparent,
    )
    scope = unique_scope_text(unique_key, unique_scope)
    waits_for = check_after(after)
    check_notify_target(notify_url, notify_on)
    query_name = "submit_task" if user_id is None else "submit_task_for_user"
    if unique_key is not None or waits_for is not None:
        query_name += "_flow"
    return query_name, {
        "queue": queue, "kind": kind, "payloads": payloads_json, "name": name,
        "priority": priority, "params": params_json, "user_id": user_id,
        "max_attempts": max_attempts, "delay": float(delay), "traceparent": traceparent,
        "unique_key": unique_key, "unique_scope": scope, "after": waits_for,
        "notify_url": notify_url,
        "notify_on": list(notify_on) if notify_on is not None else None,
    }


MAX_AFTER = 1000


def check_after(after: Any) -> list[int] | None:
    """The task ids a submission waits for, checked: at most 1000 positive ids (the database
    refuses unknown ones). None or empty: it waits for nothing."""
    if after is None:
        return None
    if isinstance(after, (str, bytes, dict)) or not isinstance(after, Sequence):
        raise InvalidInput("after must be a list of task ids", field="after")
    ids = list(after)
    for task_id in ids:
        if isinstance(task_id, bool) or not isinstance(task_id, int) or not (
            1 <= task_id < 2**63
        ):
            raise InvalidInput(f"after holds {task_id!r:.50}, which is not a task id",
                               field="after")
    if len(set(ids)) > MAX_AFTER:
        raise InvalidInput(f"after names {len(set(ids))} tasks; at most {MAX_AFTER}",
                           field="after")
    return ids or None


def submitted(row: Sequence[Any]) -> Submitted:
    """The :class:`Submitted` of a submit query's first row (``task_id`` [, ``existing``])."""
    return Submitted(int(row[0]), bool(row[1]) if len(row) > 1 else False)


async def submit_async(
    conn: psycopg.AsyncConnection[Any], queue: str, kind: str, payloads: Sequence[Any],
    **options: Any,
) -> Submitted:
    """Submit a task on the caller's async connection, inside its transaction if one is open:
    the task commits or rolls back with the caller's own rows (psycopg's ``async with
    conn.transaction():``, or a connection that is not in autocommit).

    ``options`` are :func:`prepare_submission`'s (``name``, ``priority``, ``params``,
    ``max_attempts``, ``delay``, ``unique_key``, ``unique_scope``, ``after``, ...).
    Executors are woken when the transaction commits. Raises :class:`InvalidInput` (nothing
    sent) or the translated database error; a duplicate ``unique_key`` is no error: it
    returns the existing task (``existing=True``) and leaves the transaction usable.
    """
    query_name, params = prepare_submission(queue, kind, payloads, **options)
    try:
        cur = await conn.execute(query(query_name), params)
        row = await cur.fetchone()
    except psycopg.Error as exc:
        raise translate_error(exc) from exc
    assert row is not None
    return submitted(row)


def submit(
    conn: psycopg.Connection[Any], queue: str, kind: str, payloads: Sequence[Any],
    **options: Any,
) -> Submitted:
    """:func:`submit_async` for a synchronous psycopg connection (Django, Flask, scripts)."""
    query_name, params = prepare_submission(queue, kind, payloads, **options)
    try:
        row = conn.execute(query(query_name), params).fetchone()
    except psycopg.Error as exc:
        raise translate_error(exc) from exc
    assert row is not None
    return submitted(row)
