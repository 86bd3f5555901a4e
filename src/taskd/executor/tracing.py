"""OpenTelemetry tracing of the executor: the ``otel`` extra, off unless configured.

Spans: ``taskd.claim <queue>`` around each claim statement, ``taskd.run <kind>`` around each
attempt's handler and ``taskd.record_outcomes`` around each batch of outcomes written. A run's
span is the root of a trace of its own, linked to the span that submitted its task: the
submitter's W3C ``traceparent`` is stored with the task (``taskd.submit_task(traceparent =>
...)``, ``Store.submit(traceparent=...)``, the API's ``traceparent`` header) and read, per
claimed batch and only while tracing is on, by a separate small query, so the claim itself
is the same with tracing on or off.

Off (the default) the daemon never imports opentelemetry, and each component holds None
where it would hold a :class:`Tracing`: one ``is None`` test per claim, subtask or batch.
On when the ``tracing`` setting is true, or when it is unset and ``OTEL_TRACES_EXPORTER``
(not ``none``) or ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set and the extra is installed.
The tracer provider is the one already installed (``opentelemetry-instrument``), or one built
here from ``OTEL_TRACES_EXPORTER`` (``otlp``, the default, needs
``opentelemetry-exporter-otlp-proto-http``; ``console``), with the resource from
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (service name ``taskd`` by default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from taskd import __version__
from taskd.errors import ConfigError
from taskd.queue.inspection import task_traceparents
from taskd.queue.store import Store
from taskd.settings import Settings
from taskd.types import ClaimedSubtask, Outcome

if TYPE_CHECKING:
    from opentelemetry.trace import Link, TracerProvider

    from taskd.handlers.base import SubtaskContext

log = logging.getLogger(__name__)

# Tasks whose link (or lack of one) is remembered: a batch of claims of one large task asks
# once. Past this many, the oldest are forgotten (and asked for again if claimed again).
REMEMBERED_TASKS = 10_000
EXTRA_HINT = "pip install 'taskd[otel]'"
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted(settings: Settings, environ: Mapping[str, str]) -> bool:
    """Whether tracing is asked for (see the module); imports nothing."""
    if settings.tracing is not None:
        return settings.tracing
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(environ.get(name) for name in _ENDPOINTS)


def load_tracing(settings: Settings, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """A :class:`Tracing` when tracing is asked for, None otherwise (nothing imported).

    Raises :class:`ConfigError` when the ``tracing`` setting is true and the ``otel`` extra is
    not installed, or the configured exporter is not; with tracing asked for only through
    ``OTEL_*`` variables, a missing extra is logged and tracing stays off.
    """
    environ = os.environ if environ is None else environ
    if not wanted(settings, environ):
        return None
    if find_spec("opentelemetry") is None or find_spec("opentelemetry.sdk") is None:
        if settings.tracing:
            raise ConfigError(f"tracing [TASKD_TRACING]: needs the otel extra: {EXTRA_HINT}")
        log.warning("OTEL_* variables are set but the otel extra is not installed, so taskd "
                    "does not trace: %s", EXTRA_HINT)
        return None
    return Tracing(_provider(environ), owned=True)


def _provider(environ: Mapping[str, str]) -> TracerProvider:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    current = trace.get_tracer_provider()
    if isinstance(current, SdkTracerProvider):
        return current  # installed by opentelemetry-instrument or the embedding program
    service = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": "taskd"}
    provider = SdkTracerProvider(resource=Resource.create(service))
    for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = name.strip().lower()
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise ConfigError(
                    "OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http "
                    "(pip install opentelemetry-exporter-otlp-proto-http), or set "
                    "OTEL_TRACES_EXPORTER=console") from exc
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name and name != "none":
            raise ConfigError(f"OTEL_TRACES_EXPORTER={name}: taskd knows otlp, console, none")
    return provider


class Tracing:
    """Makes the executor's spans with a tracer of ``provider``.

    ``owned``: this object built the provider, and :meth:`shutdown` flushes and closes it.
    """

    def __init__(self, provider: TracerProvider, *, owned: bool = False) -> None:
        from opentelemetry import context
        from opentelemetry.trace import SpanKind, StatusCode

        self.provider = provider
        self._owned = owned
        self._tracer = provider.get_tracer("taskd", __version__)
        self._root = context.Context()  # runs start traces of their own
        self._consumer = SpanKind.CONSUMER
        self._error = StatusCode.ERROR
        self._links: dict[int, Link | None] = {}

    def shutdown(self) -> None:
        """Export what is left and close the provider, if this object built it."""
        if self._owned:
            shutdown: Callable[[], object] | None = getattr(self.provider, "shutdown", None)
            if shutdown is not None:
                shutdown()

    async def claim(
        self, queue: str, store: Store,
        claim: Callable[[], Awaitable[list[ClaimedSubtask]]],
    ) -> list[ClaimedSubtask]:
        """``claim()`` in a ``taskd.claim <queue>`` span; then the traceparents of the claimed
        subtasks' tasks not seen before, in one query. That query never fails the claim (its
        rows are claimed already): an error is logged and the runs go without links."""
        with self._tracer.start_as_current_span(
            f"taskd.claim {queue}", attributes={"taskd.queue": queue},
        ) as span:
            claimed = await claim()
            span.set_attribute("taskd.claimed", len(claimed))
            unseen = {s.task_id for s in claimed if s.task_id not in self._links}
            if unseen:
                try:
                    found = await task_traceparents(store, unseen)
                except Exception as exc:
                    log.warning("reading the submitters' traceparents failed: %s", exc)
                    span.record_exception(exc)
                else:
                    self._remember(unseen, found)
        return claimed

    def _remember(self, task_ids: set[int], traceparents: dict[int, str]) -> None:
        from opentelemetry.trace import Link, get_current_span
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        propagator = TraceContextTextMapPropagator()
        for task_id in task_ids:
            traceparent = traceparents.get(task_id)
            link = None
            if traceparent is not None:
                submitter = get_current_span(
                    propagator.extract({"traceparent": traceparent})).get_span_context()
                link = Link(submitter) if submitter.is_valid else None
            self._links[task_id] = link
        while len(self._links) > REMEMBERED_TASKS:
            del self._links[next(iter(self._links))]

    async def run(
        self, ctx: SubtaskContext,
        attempt: Callable[[SubtaskContext], Awaitable[Outcome | None]],
    ) -> Outcome | None:
        """``attempt(ctx)`` in a ``taskd.run <kind>`` span linked to the submitter's; its
        ``taskd.outcome``: the verdict, ``lease_lost``, or ``interrupted`` (a timeout or a
        stop cut the handler short: the runner decides what that comes to)."""
        subtask = ctx.subtask
        link = self._links.get(subtask.task_id)
        with self._tracer.start_as_current_span(
            f"taskd.run {subtask.kind}", context=self._root, kind=self._consumer,
            links=[link] if link is not None else None,
            attributes={"taskd.queue": subtask.queue, "taskd.kind": subtask.kind,
                        "taskd.task_id": subtask.task_id, "taskd.subtask_id": subtask.id,
                        "taskd.attempt": subtask.attempt},
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                outcome = await attempt(ctx)
            except BaseException:
                span.set_attribute("taskd.outcome", "interrupted")
                raise
            if outcome is None:
                span.set_attribute("taskd.outcome", "lease_lost")
            else:
                span.set_attribute("taskd.outcome", outcome.verdict)
                if outcome.verdict in ("failed", "retry"):
                    span.set_status(self._error, outcome.error)
        return outcome

    @contextmanager
    def record_span(self, outcomes: int) -> Iterator[Any]:
        """A ``taskd.record_outcomes`` span around writing one batch of outcomes."""
        with self._tracer.start_as_current_span(
            "taskd.record_outcomes", context=self._root, attributes={"taskd.outcomes": outcomes},
        ) as span:
            yield span
