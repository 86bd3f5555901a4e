"""External job APIs: submit a job, checkpoint its id, poll it to its end; and single requests.

The protocol (spoken by the ``lumina`` handler and the photo profile's ``model_pose12``; see
:mod:`taskd.testing.fake_apis` for a complete, runnable server):

- ``POST {base_url}{submit_path}`` with ``{"input": <input>, "client_reference":
  "taskd-subtask-<id>"}`` and ``Authorization: Bearer <api_key>`` when a key is set, answers
  ``{"id": "<job id>", "status": ...}``; a 4xx answer rejects the input for good.
- ``GET {base_url}{status_path}`` (``{job_id}`` replaced) answers ``{"id", "status":
  "queued" | "running" | "done" | "failed", "output": ..., "error": {"code", "message"}}``.

:func:`run_job` submits, checkpoints ``{"job_id": ...}`` on the subtask, then polls every
``polling_interval`` seconds, counted from the submission (polls start that far apart, however
long each takes): ``done`` → the job's ``output`` is returned; ``failed`` → a retry (which
submits again), or a permanent failure when the error's code is ``invalid_input``;
``max_polls`` polls without an end → ``polls_exhausted``, retried. A retried attempt whose
state holds a job id polls that job instead of submitting again, so a crashed executor never
causes a second submission once the checkpoint is written.

Requests go through the daemon's shared aiohttp session (``ctx.session``): less CPU per
request than httpx, which matters at hundreds of polls a second. Transient HTTP trouble (no
answer: a failed connection or a timeout, ``unreachable``; or 408, 429, 5xx, ``unavailable``)
is retried inside the attempt with tenacity, :data:`TRANSIENT_TRIES` tries with jittered
exponential backoff (:func:`send`). At the submission, trouble that outlasts them ends the
attempt and the subtask is retried with the queue's backoff. While polling, it is a missed
poll that counts towards ``max_polls``: the job goes on running at the API, and ending the
attempt would free its slot for another job beside it. While it waits, the handler holds no
database connection.

Each handler names its API (in messages: "lumina job 7 failed") and the exception types it
raises (:class:`JobApi`): the ``lumina`` handler keeps its ``Lumina*`` types, subclasses of
the ones here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
from pydantic import SecretStr

from taskd.errors import HandlerError, HandlerTimeout, PermanentError
from taskd.handlers.base import SubtaskContext
from taskd.retries import retry_after_failure
from taskd.types import JSON

TRANSIENT_TRIES = 4
TRANSIENT_WAIT_MAX = 2.0
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_ERROR_BODY = 500
INVALID_INPUT = "invalid_input"


class ExternalApiError(HandlerError):
    """An external API did not do what was asked; the subtask is retried."""


class ApiUnavailable(ExternalApiError):
    """The API answered with a transient status (408, 429, 5xx) on every try."""


class ApiUnreachable(ExternalApiError):
    """No answer on every try: the connection failed or broke, or the request timed out."""


class JobFailed(ExternalApiError):
    """The job ended ``failed`` for a reason other than its input; it is submitted again."""


class JobLost(ExternalApiError):
    """The API does not know the checkpointed job (404); the next attempt submits again."""


class InputRejected(PermanentError):
    """The API rejected the input (a 4xx at submit, or a job failed with invalid_input)."""


class PollsExhausted(HandlerTimeout):
    """``max_polls`` polls saw no end; the next attempt resumes polling the same job."""


@dataclass(frozen=True, slots=True)
class ApiErrors:
    """The exception types one handler raises for what can go wrong at its API."""

    error: type[ExternalApiError] = ExternalApiError
    unavailable: type[ApiUnavailable] = ApiUnavailable
    unreachable: type[ApiUnreachable] = ApiUnreachable
    job_failed: type[JobFailed] = JobFailed
    job_lost: type[JobLost] = JobLost
    input_rejected: type[InputRejected] = InputRejected
    polls_exhausted: type[PollsExhausted] = PollsExhausted


GENERIC_ERRORS = ApiErrors()


@dataclass(frozen=True, slots=True)
class JobApi:
    """A job API as a handler drives it: its name in messages and its exception types.

    Where it is (``base_url``, paths, ``api_key``) and how it is polled come from the queue's
    settings.
    """

    name: str
    errors: ApiErrors = field(default_factory=ApiErrors)


def client_reference(ctx: SubtaskContext) -> str:
    """The reference sent with each submission: one per subtask, the same on every attempt."""
    return f"taskd-subtask-{ctx.id}"


async def run_job(ctx: SubtaskContext, api: JobApi, job_input: JSON) -> JSON:
    """Submit (or resume) the subtask's job and poll it to its end; return its output.

    Raises (as ``api.errors`` names them) ``input_rejected`` (permanent), ``job_failed``,
    ``job_lost``, ``unavailable``, ``unreachable`` or ``polls_exhausted`` (retried),
    :class:`taskd.PermanentError` when the queue has no ``base_url``, and
    :class:`taskd.errors.LeaseLost` from the checkpoint.
    """
    settings = ctx.queue_settings
    errors = api.errors
    if not settings.base_url:
        raise PermanentError(f"queue {ctx.queue!r} sets no base_url for the {ctx.kind} handler")
    state = ctx.state if isinstance(ctx.state, dict) else {}
    job_id = state.get("job_id")
    resumed = isinstance(job_id, str) and bool(job_id)
    if resumed:
        ctx.logger.info("resuming %s job %s", api.name, job_id)
    else:
        job_id = await _submit(ctx, api, job_input)
        submitted_at = anyio.current_time()
        # From here on, a crash resumes this job instead of submitting a second one.
        await ctx.checkpoint({**state, "job_id": job_id})
        ctx.logger.info("submitted %s job %s", api.name, job_id)
    assert isinstance(job_id, str)

    # Polls start polling_interval apart, on a clock set at the submission: the time a request
    # takes does not push every later poll back (as a fixed delay after each answer did).
    interval = settings.polling_interval
    poll_at = anyio.current_time() if resumed else submitted_at + interval
    missed: Exception | None = None
    for poll in range(settings.max_polls):
        await anyio.sleep_until(poll_at)
        # After a late start (a stalled loop, or a poll slower than the interval), the next
        # poll is due at once, not as many as were missed.
        poll_at = max(poll_at + interval, anyio.current_time())
        try:
            job = await _status(ctx, api, job_id)
        except (ApiUnreachable, ApiUnavailable) as exc:
            # The job runs on at the API whatever its status endpoint says: ending the attempt
            # here would free the slot and let another job start beside this one.
            missed = exc
            ctx.logger.warning("poll %d of %s job %s missed: %s", poll + 1, api.name, job_id,
                               describe(exc))
            continue
        missed = None
        status = job.get("status")
        if status == "done":
            ctx.logger.info("%s job %s done after %d polls", api.name, job_id, poll + 1)
            output: JSON = job.get("output")
            return output
        if status == "failed":
            await _forget_job(ctx, state, job_id)
            error = job.get("error")
            if not isinstance(error, dict):
                error = {}
            code = error.get("code", "unknown")
            message = (f"{api.name} job {job_id} failed ({code}): "
                       f"{error.get('message', '')}").strip()
            if code == INVALID_INPUT:
                raise errors.input_rejected(message)
            raise errors.job_failed(message)
    raise errors.polls_exhausted(
        f"{api.name} job {job_id} did not end within {settings.max_polls} polls "
        f"{settings.polling_interval:g} s apart"
        + (f" (the last poll failed: {describe(missed)})" if missed else "")
        + "; the next attempt resumes polling it"
    ) from missed


def describe(exc: Exception) -> str:
    """An exception's message, or its type's name when it has none."""
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class Answer:
    """An API's answer, read whole (the connection goes back to the pool at once)."""

    method: str
    url: str
    status: int
    reason: str
    body: bytes

    def json_object(self, errors: ApiErrors) -> dict[str, Any]:
        """The body as a JSON object; raises ``errors.error`` when it is not one."""
        try:
            body = json.loads(self.body)
        except ValueError as exc:
            raise errors.error(
                f"{self.method} {self.url} answered {self.status} with a body that is not JSON"
            ) from exc
        if not isinstance(body, dict):
            raise errors.error(f"{self.url} answered {type(body).__name__}, not an object")
        return body

    def api_message(self) -> str:
        """The API's own words about an error: ``error.message``, ``message``, or the text."""
        text = self.body.decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            return text[:MAX_ERROR_BODY].strip() or self.reason
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return str(error["message"])[:MAX_ERROR_BODY]
            for key in ("message", "detail", "error"):
                if isinstance(body.get(key), str):
                    return str(body[key])[:MAX_ERROR_BODY]
        return text[:MAX_ERROR_BODY]


async def _submit(ctx: SubtaskContext, api: JobApi, job_input: JSON) -> str:
    settings = ctx.queue_settings
    url = f"{settings.base_url}{settings.submit_path}"
    body = {"input": job_input, "client_reference": client_reference(ctx)}
    answer = await send(ctx, "POST", url, document=body, errors=api.errors,
                        api_key=settings.api_key)
    if answer.status >= 400:
        raise api.errors.input_rejected(
            f"{api.name} rejected the submission ({answer.status}): {answer.api_message()}"
        )
    job_id = answer.json_object(api.errors).get("id")
    if not isinstance(job_id, (str, int)) or isinstance(job_id, bool) or str(job_id) == "":
        raise api.errors.error(f"POST {url} answered {answer.status} without a job id")
    return str(job_id)


async def _status(ctx: SubtaskContext, api: JobApi, job_id: str) -> dict[str, Any]:
    settings = ctx.queue_settings
    url = f"{settings.base_url}{settings.status_path.format(job_id=job_id)}"
    answer = await send(ctx, "GET", url, errors=api.errors, api_key=settings.api_key)
    if answer.status == 404:
        await _forget_job(ctx, ctx.state if isinstance(ctx.state, dict) else {}, job_id)
        raise api.errors.job_lost(
            f"{api.name} does not know job {job_id} (404); it will be submitted again"
        )
    if answer.status >= 400:
        raise api.errors.error(f"GET {url} returned {answer.status}: {answer.api_message()}")
    return answer.json_object(api.errors)


async def forget_job(ctx: SubtaskContext, job_id: str) -> None:
    """Checkpoint that the next attempt (a retry, or a retried task) submits a new job
    instead of resuming ``job_id``; the last 20 ended job ids stay in ``ended_job_ids``."""
    await _forget_job(ctx, ctx.state if isinstance(ctx.state, dict) else {}, job_id)


async def _forget_job(ctx: SubtaskContext, state: dict[str, Any], job_id: str) -> None:
    # The next attempt must submit again, not poll a job that has ended or vanished.
    ended = [*state.get("ended_job_ids", []), job_id][-20:]
    await ctx.checkpoint({"job_id": None, "ended_job_ids": ended})


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (ApiUnreachable, ApiUnavailable))


# What "no answer" looks like in aiohttp: a failed or broken connection, a body cut short, or
# the request's timeout (TimeoutError, which aiohttp's own timeout errors also are).
_NO_ANSWER = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)


async def send(
    ctx: SubtaskContext, method: str, url: str, *, document: Any = None,
    errors: ApiErrors = GENERIC_ERRORS, api_key: SecretStr | None = None,
) -> Answer:
    """One request through ``ctx.session``, retried on transient trouble; returns any other
    answer (a 4xx included) for the caller to judge.

    ``api_key``, when given, is sent as ``Authorization: Bearer``. Raises
    ``errors.unreachable`` or ``errors.unavailable`` when every try failed.
    """
    settings = ctx.queue_settings
    headers = ({} if api_key is None
               else {"Authorization": f"Bearer {api_key.get_secret_value()}"})
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout)

    async def once() -> Answer:
        try:
            # No redirects, as with httpx: a redirected POST would come back as a GET.
            async with ctx.session.request(
                method, url, json=document, headers=headers, timeout=timeout,
                allow_redirects=False,
            ) as response:
                answer = Answer(method, url, response.status, response.reason or "",
                                await response.read())
        except _NO_ANSWER as exc:
            what = type(exc).__name__ + (f": {exc}" if str(exc) else "")
            raise errors.unreachable(f"{method} {url} got no answer ({what})") from exc
        if answer.status in TRANSIENT_STATUSES:
            raise errors.unavailable(
                f"{method} {url} returned {answer.status}: {answer.api_message()}"
            )
        return answer

    return await retry_after_failure(
        once, _is_transient, tries=TRANSIENT_TRIES, wait_base=0.1, wait_max=TRANSIENT_WAIT_MAX,
    )
