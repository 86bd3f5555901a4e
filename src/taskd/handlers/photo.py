"""The photo-platform profile's handlers: ``basic_clean`` and ``model_pose12``.

Not built-ins: deploy/examples/photo-platform.toml registers them (``handlers.basic_clean =
"taskd.handlers.photo:basic_clean"``), with their queues and the API's template of 12 pose
prompts; docs/photo-platform.md tells the whole flow.

- ``basic_clean`` runs in-process (a plain function, so in a worker thread): it checks a
  photo's ``image_url`` and the clean-up ``operations`` asked for and returns the cleaned
  reference. It stands where a platform's own image code goes.
- ``model_pose12`` is one shot of a 12-pose model job: it submits the subtask's payload (its
  pose prompt) to the external image API and polls it to its end with
  :func:`taskd.handlers.jobs.run_job` (the job id is checkpointed, a retry resumes the job),
  then asks the queue's ``audit_url`` about the image. An image the audit rejects fails the
  subtask for good (:class:`ContentRejected`) and its job is forgotten, so that a retry of
  the task makes a new image; an approved one is the result
  ``{"image_url", "job_id", "prompt"}``, and its URL joins the task's ``result_urls``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from taskd.errors import PermanentError
from taskd.handlers.base import SubtaskContext
from taskd.handlers.jobs import (
    MAX_ERROR_BODY,
    ApiErrors,
    ExternalApiError,
    JobApi,
    client_reference,
    forget_job,
    run_job,
    send,
)
from taskd.types import JSON

OPERATIONS = ("trim", "white_background", "auto_level", "denoise")
DEFAULT_OPERATIONS = ("trim", "white_background", "auto_level")
MAX_URL = 2048


class ContentRejected(PermanentError):
    """The content audit rejected the image: the subtask fails without retry."""


class AuditError(ExternalApiError):
    """The audit endpoint answered, but not with a verdict; the subtask is retried."""


IMAGE_API = JobApi("image")
AUDIT_ERRORS = ApiErrors(error=AuditError)


def basic_clean(ctx: SubtaskContext) -> JSON:
    """Clean up one photo: ``{"image_url": ..., "operations": [...]}`` (operations default to
    trim, white_background, auto_level) → ``{"image_url", "source_url", "operations"}``.

    The cleaned reference is the source's with the scheme and host lower-cased and the
    fragment and ``utm_*`` tracking parameters dropped. Raises :class:`taskd.PermanentError`
    naming the payload key that is wrong.
    """
    payload = ctx.payload
    source = payload.get("image_url")
    if not isinstance(source, str) or not source:
        raise PermanentError("payload 'image_url' is missing: basic_clean needs "
                             '{"image_url": "https://..."}')
    if len(source) > MAX_URL:
        raise PermanentError(f"payload 'image_url' is longer than {MAX_URL} characters")
    try:
        parts = urlsplit(source.strip())
    except ValueError as exc:
        raise PermanentError(f"payload 'image_url' {source!r} is not a URL: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PermanentError(f"payload 'image_url' {source!r} must be an http:// or https:// URL")
    operations = payload.get("operations", list(DEFAULT_OPERATIONS))
    if (not isinstance(operations, list) or not operations
            or not all(isinstance(op, str) for op in operations)):
        raise PermanentError("payload 'operations' must be a non-empty list of names")
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown:
        raise PermanentError(f"payload 'operations': unknown operation {unknown[0]!r}; "
                             f"known: {', '.join(OPERATIONS)}")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not k.lower().startswith("utm_")]
    cleaned = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path,
                          urlencode(query), ""))
    ctx.logger.info("cleaned %s with %s", cleaned, ", ".join(operations))
    # In order, each once: the same request always gives the same result.
    ordered: list[JSON] = [op for op in OPERATIONS if op in operations]
    return {"image_url": cleaned, "source_url": source, "operations": ordered}


async def model_pose12(ctx: SubtaskContext) -> JSON:
    """Run one pose's image job to its end, then have the image audited.

    Raises :class:`ContentRejected` (permanent) when the audit rejects the image,
    :class:`taskd.PermanentError` when the queue sets no ``audit_url`` or the job's output has
    no ``image_url``, :class:`AuditError` or :class:`taskd.handlers.jobs.ApiUnreachable` /
    :class:`~taskd.handlers.jobs.ApiUnavailable` (retried: the next attempt resumes the job and
    asks again), and what :func:`taskd.handlers.jobs.run_job` raises.
    """
    settings = ctx.queue_settings
    if not settings.audit_url:
        # Checked first: no image is made that nobody could audit.
        raise PermanentError(f"queue {ctx.queue!r} sets no audit_url for the model_pose12 "
                             "handler")
    output = await run_job(ctx, IMAGE_API, ctx.payload)
    state = ctx.state if isinstance(ctx.state, dict) else {}
    job_id = state.get("job_id")
    image_url = output.get("image_url") if isinstance(output, dict) else None
    if not isinstance(image_url, str) or not image_url:
        await forget_job(ctx, str(job_id))
        raise PermanentError(f"image job {job_id} ended without an image_url in its output")
    prompt = ctx.payload.get("prompt")
    answer = await send(
        ctx, "POST", settings.audit_url, api_key=settings.audit_api_key, errors=AUDIT_ERRORS,
        document={"image_url": image_url, "prompt": prompt,
                  "client_reference": client_reference(ctx)},
    )
    if answer.status >= 400:
        raise PermanentError(f"the content audit refused the request ({answer.status}): "
                             f"{answer.api_message()}")
    verdict = answer.json_object(AUDIT_ERRORS)
    approved = verdict.get("approved")
    if not isinstance(approved, bool):
        raise AuditError(f"POST {settings.audit_url} answered without a boolean 'approved'")
    if not approved:
        # A retry of the task makes a new image; this one is not asked about again.
        await forget_job(ctx, str(job_id))
        reason = verdict.get("reason")
        said = reason[:MAX_ERROR_BODY] if isinstance(reason, str) else "no reason given"
        raise ContentRejected(f"content audit rejected image {image_url}: {said}")
    ctx.logger.info("image %s of job %s approved", image_url, job_id)
    return {"image_url": image_url, "job_id": job_id, "prompt": prompt}
