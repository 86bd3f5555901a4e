"""The ``lumina`` built-in handler: submit a job to an external API, then poll it until it ends.

The payload is the job's input. The protocol, the checkpoint of the job id, the polling and
what is retried are :mod:`taskd.handlers.jobs`' (:func:`~taskd.handlers.jobs.run_job`); see
:mod:`taskd.testing.fake_apis` for a complete, runnable API. This module names the API
"lumina" in messages and gives its errors their ``Lumina*`` types, subclasses of the generic
ones, so that error_logs and alerts keep their names.
"""

from __future__ import annotations

from taskd.handlers.base import SubtaskContext
from taskd.handlers.jobs import (
    TRANSIENT_TRIES,
    ApiErrors,
    ApiUnavailable,
    ApiUnreachable,
    ExternalApiError,
    InputRejected,
    JobApi,
    JobFailed,
    JobLost,
    PollsExhausted,
    client_reference,
    run_job,
)
from taskd.types import JSON

__all__ = [
    "LUMINA",
    "TRANSIENT_TRIES",
    "LuminaError",
    "LuminaInputRejected",
    "LuminaJobFailed",
    "LuminaJobLost",
    "LuminaPollsExhausted",
    "LuminaUnavailable",
    "LuminaUnreachable",
    "client_reference",
    "handle",
]


class LuminaError(ExternalApiError):
    """The Lumina API did not do what was asked; the subtask is retried."""


class LuminaUnavailable(LuminaError, ApiUnavailable):
    """The API answered with a transient status (408, 429, 5xx) on every try."""


class LuminaUnreachable(LuminaError, ApiUnreachable):
    """No answer on every try: the connection failed or broke, or the request timed out."""


class LuminaJobFailed(LuminaError, JobFailed):
    """The job ended ``failed`` for a reason other than its input; it is submitted again."""


class LuminaJobLost(LuminaError, JobLost):
    """The API does not know the checkpointed job (404); the next attempt submits again."""


class LuminaInputRejected(InputRejected):
    """The API rejected the payload (a 4xx at submit, or a job failed with invalid_input)."""


class LuminaPollsExhausted(PollsExhausted):
    """``max_polls`` polls saw no end; the next attempt resumes polling the same job."""


LUMINA = JobApi("lumina", ApiErrors(
    error=LuminaError, unavailable=LuminaUnavailable, unreachable=LuminaUnreachable,
    job_failed=LuminaJobFailed, job_lost=LuminaJobLost, input_rejected=LuminaInputRejected,
    polls_exhausted=LuminaPollsExhausted,
))


async def handle(ctx: SubtaskContext) -> JSON:
    """Submit (or resume) the subtask's job and poll it to its end; return its output.

    Raises :class:`LuminaInputRejected` (permanent), :class:`LuminaJobFailed`,
    :class:`LuminaJobLost`, :class:`LuminaUnavailable`, :class:`LuminaUnreachable` or
    :class:`LuminaPollsExhausted` (retried), :class:`taskd.PermanentError` when the queue has no
    ``base_url``, and :class:`taskd.errors.LeaseLost` from the checkpoint.
    """
    return await run_job(ctx, LUMINA, ctx.payload)
