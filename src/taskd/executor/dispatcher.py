"""The dispatcher: delivers the task-end outbox (``taskd.notifications``) as signed webhooks.

Each pass claims due notifications ``FOR UPDATE SKIP LOCKED`` under a lease on the database
clock (:func:`taskd.queue.notifications.claim_notifications`), POSTs each with a whole-request
timeout, at most ``max_connections`` at once, and writes every result in one fenced statement.
Any daemon may deliver; no notification is delivered by two at once; one whose answer was lost
(a crash, a timeout) is delivered again, with the same ``webhook-id``, so receivers deduplicate.

The request follows the Standard Webhooks specification: ``webhook-id`` (stable per outbox
row), ``webhook-timestamp`` and ``webhook-signature`` (HMAC-SHA256 with the target's secret, by
the ``standardwebhooks`` package). Answers: 2xx delivered; 408, 429 and 5xx, a timeout, a
refused or closed connection retried with capped exponential backoff and jitter (a 429's or
503's ``Retry-After`` is honoured) until ``retry_for`` has passed, then dead; any other status
dead at once, with the status recorded.

It looks for due notifications every ``poll_interval``, with a statement of its own, or, given
a wake-up (the daemon's poller, whose one statement an interval asks for it too, when the
poller looks at least as often), only when woken: an idle dispatcher then makes one statement
every ``stats_interval``, for its gauges.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import anyio
import httpx
from standardwebhooks.webhooks import Webhook

from taskd.errors import ConfigError, DatabaseError
from taskd.executor.runner import backoff_delay
from taskd.executor.wakeup import Wakeup
from taskd.metrics import Metrics
from taskd.queue import notifications
from taskd.queue.notifications import ClaimedNotification, DeliveryResult
from taskd.queue.store import Store
from taskd.settings import Settings

log = logging.getLogger(__name__)

USER_AGENT = "taskd-webhooks/1"
# Room for a status line and a reason, never a whole error page.
MAX_ERROR_TEXT = 300


@dataclass(frozen=True, slots=True)
class DispatcherConfig:
    """``timeout``: one delivery, connect to last byte. ``retry_for``: seconds from the first
    attempt after which a notification is dead. ``lease_timeout``: a claim's lease; it must
    outlast a batch (``batch_size / max_connections`` rounds of ``timeout``). ``signing_key``
    and ``secrets``: the targets' Standard Webhooks secrets (see :func:`target_secret`).
    ``task_link``: the task's link in the payload, with ``{id}``. Raises
    :class:`ConfigError` for values it cannot work with."""

    executor_id: str
    timeout: float = 10.0
    retry_for: float = 86400.0
    retry_base: float = 5.0
    retry_max: float = 3600.0
    lease_timeout: float = 60.0
    batch_size: int = 100
    max_connections: int = 20
    poll_interval: float = 1.0
    stats_interval: float = 15.0
    task_link: str = "/v1/tasks/{id}"
    signing_key: str | None = None
    secrets: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if min(self.timeout, self.retry_for, self.retry_base, self.retry_max,
               self.lease_timeout, self.poll_interval, self.stats_interval) <= 0:
            raise ConfigError("dispatcher: durations must be > 0 seconds")
        if min(self.batch_size, self.max_connections) < 1:
            raise ConfigError("dispatcher: batch_size and max_connections must be >= 1")
        rounds = -(-self.batch_size // self.max_connections)
        if rounds * self.timeout >= self.lease_timeout:
            raise ConfigError(
                f"notifications.lease_timeout ({self.lease_timeout:g}) must be longer than a "
                f"batch can take: ceil(batch_size / max_connections) * timeout = "
                f"{rounds * self.timeout:g}"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatcherConfig:
        n = settings.notifications
        return cls(
            executor_id=settings.executor_id, timeout=n.timeout, retry_for=n.retry_for,
            retry_base=n.retry_base, retry_max=n.retry_max, lease_timeout=n.lease_timeout,
            batch_size=n.batch_size, max_connections=n.max_connections,
            poll_interval=n.poll_interval, stats_interval=settings.stats_interval,
            task_link=n.task_link or "/v1/tasks/{id}",
            signing_key=n.signing_key.get_secret_value() if n.signing_key else None,
            secrets={url: s.get_secret_value() for url, s in n.secrets.items()},
        )


def target_secret(url: str, signing_key: str | None, secrets: Mapping[str, str]) -> str | None:
    """The Standard Webhooks secret (``whsec_<base64>``) for the target ``url``: the one
    configured for it, else HMAC-SHA256(signing_key, url), so every daemon derives the same
    secret and each target gets its own; None without either."""
    if url in secrets:
        return secrets[url]
    if signing_key is None:
        return None
    digest = hmac.new(signing_key.encode(), url.encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(digest).decode()


def split_error(text: str | None) -> dict[str, str] | None:
    """A subtask's error (``"<Type>: <message>"``, as the runner stores it) as type and message."""
    if not text:
        return None
    head, sep, rest = text.partition(": ")
    if sep and head.replace(".", "").replace("_", "").isalnum():
        return {"type": head, "message": rest}
    return {"type": head if not sep and text.isidentifier() else "Error", "message": text}


def payload(n: ClaimedNotification, task_link: str) -> dict[str, Any]:
    """The body: Standard Webhooks' ``type``, ``timestamp`` (when the task ended) and ``data``."""
    ended = n.task_completed_at or n.created_at
    return {
        "type": f"task.{n.event}",
        "timestamp": ended.isoformat(),
        "data": {
            "notification_id": n.id,
            "task": {
                "id": n.task_id, "name": n.name, "queue": n.queue, "kind": n.kind,
                "status": n.event, "current_status": n.task_status,
                "counts": {"total": n.total, "completed": n.completed, "failed": n.failed,
                           "cancelled": n.cancelled},
                "error": split_error(n.first_error) if n.event == "failed" else None,
                "created_at": n.task_created_at.isoformat() if n.task_created_at else None,
                "ended_at": ended.isoformat(),
                "link": task_link.replace("{id}", str(n.task_id)),
            },
        },
    }


def webhook_id(n: ClaimedNotification) -> str:
    """Stable for the outbox row: every delivery of it carries the same id."""
    return f"taskd_notification_{n.id}"


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Dispatcher:
    def __init__(
        self, config: DispatcherConfig, store: Store, metrics: Metrics, *,
        wakeup: Wakeup | None = None,
    ) -> None:
        """``wakeup``: set when a notification may be due (the daemon's poller); the
        dispatcher then looks only when it is set, not every ``poll_interval``."""
        self.config = config
        self.store = store
        self.metrics = metrics
        self.wakeup = wakeup
        self._next_stats = 0.0
        self._warned_unsigned = False

    def client(self) -> httpx.AsyncClient:
        """The HTTP client: at most ``max_connections`` connections, no redirects followed."""
        c = self.config
        return httpx.AsyncClient(
            timeout=httpx.Timeout(c.timeout),
            limits=httpx.Limits(max_connections=c.max_connections,
                                max_keepalive_connections=c.max_connections),
            follow_redirects=False, headers={"user-agent": USER_AGENT},
        )

    async def run(self) -> None:
        async with self.client() as http:
            due = True  # at start, look once
            while True:
                claimed = 0
                try:
                    if due:
                        claimed = await self.deliver_once(http)
                    await self._refresh_gauges()
                except DatabaseError as exc:
                    log.warning("dispatcher pass failed: %s", exc)
                due = claimed >= self.config.batch_size or await self._wait()

    async def _wait(self) -> bool:
        """Wait for the next look; return whether to look for due notifications then (False:
        only the gauges are due)."""
        if self.wakeup is None:
            await anyio.sleep(self.config.poll_interval * random.uniform(0.8, 1.2))
            return True
        return await self.wakeup.wait(max(0.0, self._next_stats - anyio.current_time()))

    async def deliver_once(self, http: httpx.AsyncClient) -> int:
        """Claim one batch, deliver it, record the results; return how many were claimed."""
        c = self.config
        claimed = await notifications.claim_notifications(
            self.store, c.executor_id, c.batch_size, c.lease_timeout)
        if not claimed:
            return 0
        results: list[DeliveryResult] = []
        limiter = anyio.CapacityLimiter(c.max_connections)

        async def one(n: ClaimedNotification) -> None:
            async with limiter:
                results.append(await self.deliver(http, n))

        async with anyio.create_task_group() as tg:
            for n in claimed:
                tg.start_soon(one, n)
        # Cancelled before this (the daemon stops), the batch is delivered again once its
        # lease ends: at least once, never lost.
        written = await notifications.record_deliveries(
            self.store, c.executor_id, results, c.retry_for)
        for result in results:
            status = written.get(result.id)
            if status is None:
                continue  # the lease was lost: another dispatcher has it now
            outcome = {"delivered": "delivered", "dead": "dead"}.get(status, "retried")
            self.metrics.notification_deliveries.labels(outcome).inc()
            if outcome == "dead":
                log.warning("notification dead", extra={
                    "notification_id": result.id, "status_code": result.status_code,
                    "error": result.error, "attempts": result.attempts})
        return len(claimed)

    async def deliver(self, http: httpx.AsyncClient, n: ClaimedNotification) -> DeliveryResult:
        """POST one notification; what came of it (never raises for the receiver's faults)."""
        c = self.config
        secret = target_secret(n.url, c.signing_key, c.secrets)
        if secret is None:
            if not self._warned_unsigned:
                self._warned_unsigned = True
                log.error("no signing secret: set notifications.signing_key (or a secret per "
                          "target in notifications.secrets); notifications go dead unsent")
            return DeliveryResult(n.id, n.attempts, "dead", error="no signing secret for this "
                                  "target (notifications.signing_key or .secrets)")
        body = json.dumps(payload(n, c.task_link), separators=(",", ":")).encode()
        msg_id = webhook_id(n)
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, body),
        }
        try:
            with anyio.fail_after(c.timeout):
                response = await http.post(n.url, content=body, headers=headers)
        except TimeoutError:
            return self._retry(n, None, f"no answer within {c.timeout:g} s")
        except httpx.HTTPError as exc:
            return self._retry(n, None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_TEXT])
        code = response.status_code
        if 200 <= code < 300:
            return DeliveryResult(n.id, n.attempts, "delivered", status_code=code)
        reason = f"HTTP {code} {response.reason_phrase}".strip()[:MAX_ERROR_TEXT]
        if code in (408, 429) or code >= 500:
            wait = retry_after(response) if code in (429, 503) else None
            return self._retry(n, code, reason, at_least=wait)
        # Any other answer (4xx, a redirect) will not change by asking again.
        return DeliveryResult(n.id, n.attempts, "dead", status_code=code, error=reason)

    def _retry(self, n: ClaimedNotification, code: int | None, error: str, *,
               at_least: float | None = None) -> DeliveryResult:
        c = self.config
        delay = backoff_delay(n.attempts, c.retry_base, c.retry_max)
        if at_least is not None:
            # The receiver's Retry-After wins, even past retry_max (retry_for still bounds it).
            delay = at_least
        return DeliveryResult(n.id, n.attempts, "retry", delay=delay, status_code=code,
                              error=error)

    async def _refresh_gauges(self) -> None:
        now = anyio.current_time()
        if now < self._next_stats:
            return
        self._next_stats = now + self.config.stats_interval
        overview = await notifications.notification_overview(self.store)
        self.metrics.notifications.labels("undelivered").set(overview.undelivered)
        self.metrics.notifications.labels("dead").set(overview.dead)
        self.metrics.notification_oldest_undelivered.set(
            overview.oldest_undelivered_seconds or 0.0)
