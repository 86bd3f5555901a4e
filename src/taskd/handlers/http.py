"""The ``http`` built-in handler: one HTTP request per subtask, over the daemon's shared client.

Payload keys (all optional when the queue's settings give them):

- ``url``: where to send; else the queue's ``url``. Only ``http`` and ``https``.
- ``method``: GET, POST, PUT, PATCH or DELETE; else the queue's ``method`` (POST).
- ``body``: the JSON body. Without it, POST, PUT and PATCH send the payload less the keys
  named here; GET and DELETE send no body.
- ``headers``: extra request headers (an object of strings).
- ``timeout``: seconds for this request; else the queue's ``request_timeout`` (30).

Outcomes: 2xx → the JSON response body is the result (an empty body gives null, a body that
is not JSON gives ``{"status": code, "text": body}``); 408, 429 and 5xx → retried (429 with a
``Retry-After`` of seconds waits that long without spending the attempt); any other 4xx →
permanent failure with the response's text; timeouts and connection errors → retried.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from taskd.errors import HandlerError, PermanentError, RetryLater
from taskd.handlers.base import SubtaskContext
from taskd.types import JSON

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CONTROL_KEYS = ("url", "method", "body", "headers", "timeout")
# Enough of a response to say what went wrong, not enough to bloat the subtasks table.
MAX_ERROR_BODY = 500
MAX_TEXT_RESULT = 64 * 1024
# Status codes that mean "not now" rather than "never".
TRANSIENT_4XX = (408, 425, 429)


class HttpStatusError(HandlerError):
    """The server answered with a status that is retried (408, 425, 429, 5xx)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class HttpRejected(PermanentError):
    """The server answered with a 4xx that will not change on retry."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


async def handle(ctx: SubtaskContext) -> JSON:
    """Send the request the payload describes; return the response's JSON.

    Raises :class:`taskd.PermanentError` (:class:`HttpRejected` for a 4xx) for bad payloads
    and rejected requests, :class:`HttpStatusError` or an :class:`httpx.HTTPError` for what is
    worth retrying, and :class:`taskd.RetryLater` for a 429 with ``Retry-After``.
    """
    request = build_request(ctx)
    response = await ctx.http.send(request)
    return interpret(response, request)


def build_request(ctx: SubtaskContext) -> httpx.Request:
    """The request the payload and the queue's settings describe.

    Raises :class:`taskd.PermanentError` naming the payload key that is wrong.
    """
    payload = ctx.payload
    settings = ctx.queue_settings
    url = payload.get("url", settings.url)
    if not isinstance(url, str) or not url:
        raise PermanentError(
            f"no URL: the payload has no 'url' and queue {ctx.queue!r} sets no url"
        )
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise PermanentError(f"payload 'url' {url!r} is not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise PermanentError(f"payload 'url' {url!r} must be an http:// or https:// URL")
    method = payload.get("method", settings.method)
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise PermanentError(f"payload 'method' must be one of {', '.join(METHODS)}, "
                             f"got {method!r}")
    method = method.upper()
    headers = payload.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise PermanentError("payload 'headers' must be an object of strings")
    timeout = payload.get("timeout", settings.request_timeout)
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout) or timeout <= 0):
        raise PermanentError(f"payload 'timeout' must be a number of seconds > 0, got {timeout!r}")
    body: Any
    if "body" in payload:
        body = payload["body"]
    elif method in ("POST", "PUT", "PATCH"):
        body = {k: v for k, v in payload.items() if k not in CONTROL_KEYS}
    else:
        body = None
    return ctx.http.build_request(
        method, parsed, headers=headers, json=body,
        timeout=httpx.Timeout(timeout),
    )


def interpret(response: httpx.Response, request: httpx.Request) -> JSON:
    """The result of a response, or the exception that says what to do next."""
    status = response.status_code
    what = f"{request.method} {request.url} returned {status}"
    if 200 <= status < 300:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return {"status": status, "text": response.text[:MAX_TEXT_RESULT]}
    detail = response.text[:MAX_ERROR_BODY].strip()
    message = f"{what}: {detail}" if detail else what
    if status == 429:
        delay = _retry_after(response)
        if delay is not None:
            raise RetryLater(delay, message)
    if status >= 500 or status in TRANSIENT_4XX:
        raise HttpStatusError(message, status)
    if 400 <= status < 500:
        raise HttpRejected(message, status)
    # 1xx and 3xx (redirects are not followed): nothing sensible to retry.
    raise HttpRejected(message, status)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date, or nothing: plain backoff will do
    return seconds if math.isfinite(seconds) and 0 <= seconds <= 86400 else None
