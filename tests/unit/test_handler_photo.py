"""The photo-platform handlers, one attempt at a time (taskd.testing.run_handler), against the
fake image and audit APIs on loopback."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from taskd.settings import QueueSettings, Settings
from taskd.testing import FakeApis, run_handler

pytestmark = pytest.mark.anyio

HANDLERS = {"basic_clean": "taskd.handlers.photo:basic_clean",
            "model_pose12": "taskd.handlers.photo:model_pose12"}
MARKER = "[unsafe]"


def settings(api: FakeApis | None = None, **images: Any) -> Settings:
    options: dict[str, Any] = {"polling_interval": 0.05, "max_polls": 100, "timeout": 10,
                               "retry_base": 0.1, "retry_max": 1}
    if api is not None:
        options |= {"base_url": api.url, "audit_url": api.audit_url}
    return Settings(handlers=HANDLERS, queues={"images": QueueSettings(**(options | images))})


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1/audit"


async def test_basic_clean_cleans_the_reference_in_process() -> None:
    outcome = await run_handler("basic_clean", {
        "image_url": "HTTPS://CDN.Example.com/a/Shirt.png?utm_source=x&w=800#top",
        "operations": ["denoise", "trim", "trim"],
    }, settings=settings())
    assert outcome.completed, outcome.error
    assert outcome.result == {
        "image_url": "https://cdn.example.com/a/Shirt.png?w=800",
        "source_url": "HTTPS://CDN.Example.com/a/Shirt.png?utm_source=x&w=800#top",
        "operations": ["trim", "denoise"],
    }
    default = await run_handler("basic_clean", {"image_url": "https://x.example/p.jpg"},
                                settings=settings())
    assert default.result == {"image_url": "https://x.example/p.jpg",
                              "source_url": "https://x.example/p.jpg",
                              "operations": ["trim", "white_background", "auto_level"]}


@pytest.mark.parametrize(("payload", "message"), [
    ({}, "payload 'image_url' is missing"),
    ({"image_url": "ftp://x.example/p.jpg"}, "must be an http:// or https:// URL"),
    ({"image_url": "https://x.example/p.jpg", "operations": []},
     "payload 'operations' must be a non-empty list of names"),
    ({"image_url": "https://x.example/p.jpg", "operations": ["sharpen"]},
     "unknown operation 'sharpen'; known: trim, white_background, auto_level, denoise"),
])
async def test_basic_clean_refuses_a_bad_payload_for_good(
    payload: dict[str, Any], message: str
) -> None:
    outcome = await run_handler("basic_clean", payload, settings=settings())
    assert outcome.verdict == "failed"
    assert outcome.error_type == "PermanentError" and outcome.error is not None
    assert message in outcome.error


async def test_model_pose12_submits_checkpoints_polls_audits_and_returns_the_image() -> None:
    with FakeApis(job_seconds=0.2, reject_marker=MARKER) as api:
        outcome = await run_handler("model_pose12", {"prompt": "a model, front view"},
                                    settings=settings(api), queue="images")
        stats = api.stats()
    assert outcome.completed, outcome.error
    assert outcome.result == {"image_url": "https://lumina.invalid/job-1.png",
                              "job_id": "job-1", "prompt": "a model, front view"}
    assert outcome.checkpoints == [{"job_id": "job-1"}]
    assert stats.submissions == {"taskd-subtask-1": 1}
    assert stats.polls >= 2 and (stats.audits, stats.audit_rejections) == (1, 0)


async def test_an_image_the_audit_rejects_fails_the_subtask_for_good() -> None:
    with FakeApis(job_seconds=0.05, reject_marker=MARKER) as api:
        outcome = await run_handler("model_pose12", {"prompt": f"a model {MARKER}"},
                                    settings=settings(api), queue="images", max_attempts=4)
        stats = api.stats()
    assert outcome.verdict == "failed"  # on attempt 1 of 4: no retry
    assert outcome.error == (
        "ContentRejected: content audit rejected image https://lumina.invalid/job-1.png: "
        "the prompt contains the marker '[unsafe]'"
    )
    assert (stats.jobs, stats.audits, stats.audit_rejections) == (1, 1, 1)
    # A retry of the task makes a new image rather than ask about this one again.
    assert outcome.checkpoints == [{"job_id": "job-1"},
                                   {"job_id": None, "ended_job_ids": ["job-1"]}]


async def test_an_unreachable_audit_is_retried_and_the_retry_resumes_the_same_job() -> None:
    with FakeApis(job_seconds=0.05, reject_marker=MARKER) as api:
        first = await run_handler("model_pose12", {"prompt": "a model"}, queue="images",
                                  settings=settings(api, audit_url=closed_port_url()))
        assert first.verdict == "retry"
        assert first.error_type == "ApiUnreachable" and first.error is not None
        assert first.error.startswith("ApiUnreachable: POST http://127.0.0.1:")
        assert first.state == {"job_id": "job-1"}
        again = await run_handler("model_pose12", {"prompt": "a model"}, queue="images",
                                  settings=settings(api), attempt=2, state=first.state)
        stats = api.stats()
    assert again.completed and again.result == {
        "image_url": "https://lumina.invalid/job-1.png", "job_id": "job-1", "prompt": "a model"}
    assert stats.jobs == 1 and stats.audits == 1  # one image, audited once it could be


async def test_no_audit_url_fails_before_any_image_is_made() -> None:
    with FakeApis(job_seconds=0.05) as api:
        outcome = await run_handler("model_pose12", {"prompt": "a model"}, queue="images",
                                    settings=settings(api, audit_url=None))
        stats = api.stats()
    assert outcome.verdict == "failed"
    assert outcome.error == ("PermanentError: queue 'images' sets no audit_url for the "
                             "model_pose12 handler")
    assert stats.jobs == 0


async def test_an_audit_that_refuses_the_request_fails_for_good() -> None:
    with FakeApis(job_seconds=0.05) as api:
        outcome = await run_handler("model_pose12", {"prompt": "a model"}, queue="images",
                                    settings=settings(api, audit_url=api.url + "/v1/nothing"))
    assert outcome.verdict == "failed"
    assert outcome.error == ("PermanentError: the content audit refused the request (404): "
                             "no route POST /v1/nothing")
