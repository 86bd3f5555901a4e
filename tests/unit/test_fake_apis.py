"""The fake external APIs themselves (image jobs, content audit), over real HTTP on loopback."""

from __future__ import annotations

import time

import httpx
import pytest

from taskd.testing import FakeApis, FakeLumina


def test_jobs_run_by_the_clock_and_are_counted_per_reference() -> None:
    with FakeLumina(job_seconds=0.2) as api, httpx.Client(base_url=api.url) as client:
        first = client.post("/v1/jobs", json={"input": {"p": 1}, "client_reference": "r1"})
        second = client.post("/v1/jobs", json={"input": {"p": 2, "seconds": 5},
                                               "client_reference": "r2"})
        assert (first.status_code, first.json()) == (201, {"id": "job-1", "status": "running"})
        assert client.get("/v1/jobs/job-1").json()["status"] == "running"
        deadline = time.monotonic() + 5
        while client.get("/v1/jobs/job-1").json()["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)  # the job's clock runs in the server: polling it is the point
        done = client.get("/v1/jobs/job-1").json()
        assert done["status"] == "done" and done["output"]["input"] == {"p": 1}
        assert second.json()["id"] == "job-2"
        assert client.get("/v1/jobs/job-9").status_code == 404
        stats = client.get("/v1/stats").json()
    assert stats["submissions"] == {"r1": 1, "r2": 1}
    assert stats["max_in_flight"] == 2 and stats["in_flight"] == 1


def test_rejections_failures_transient_errors_and_the_api_key() -> None:
    with FakeLumina(job_seconds=0, api_key="k") as api, httpx.Client(base_url=api.url) as client:
        assert client.post("/v1/jobs", json={"input": {}}).status_code == 401
        client.headers["Authorization"] = "Bearer k"
        rejected = client.post("/v1/jobs", json={"input": {"reject": "no prompt"}})
        assert rejected.status_code == 422
        assert rejected.json() == {"error": {"code": "invalid_input", "message": "no prompt"}}
        failing = client.post("/v1/jobs", json={"input": {"fail": "internal"}}).json()
        assert client.get(f"/v1/jobs/{failing['id']}").json()["error"]["code"] == "internal"
        assert client.post("/v1/jobs", content=b"{").status_code == 400
    with FakeLumina(transient_rate=1.0) as api, httpx.Client(base_url=api.url) as client:
        assert client.post("/v1/jobs", json={"input": {}}).status_code == 503
        assert api.stats().transient_errors == 1 and api.stats().jobs == 0
    with FakeLumina(job_seconds=0, failure_rate=1.0) as api, httpx.Client(base_url=api.url) as c:
        job = c.post("/v1/jobs", json={"input": {}}).json()
        assert c.get(f"/v1/jobs/{job['id']}").json()["status"] == "failed"


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="transient_rate must be from 0 to 1"):
        FakeLumina(transient_rate=2)
    with pytest.raises(ValueError, match="latency must be >= 0"):
        FakeLumina(latency=-1)


def test_latency_holds_every_answer_back() -> None:
    with FakeLumina(job_seconds=0, latency=0.2) as api, httpx.Client(base_url=api.url) as client:
        started = time.monotonic()
        assert client.post("/v1/jobs", json={"input": {}}).status_code == 201
        assert time.monotonic() - started >= 0.2


def test_a_body_over_1_mib_is_413_and_an_unknown_route_404() -> None:
    with FakeLumina() as api, httpx.Client(base_url=api.url) as client:
        big = client.post("/v1/jobs", content=b"x" * (1024 * 1024 + 1))
        assert big.status_code == 413
        assert big.json() == {"error": {"code": "too_large", "message": "body over 1 MiB"}}
        assert client.put("/v1/jobs", json={}).status_code == 404
        assert api.stats().jobs == 0


def test_the_older_name_is_the_same_server() -> None:
    assert FakeLumina is FakeApis


def test_the_audit_approves_and_rejects_by_the_marker_in_url_prompt_or_job_input() -> None:
    with FakeApis(job_seconds=0, reject_marker="[unsafe]") as api, \
            httpx.Client(base_url=api.url) as client:
        assert api.audit_url == api.url + "/v1/audit"
        clean = client.post("/v1/jobs", json={"input": {"prompt": "a cat"}}).json()
        dirty = client.post("/v1/jobs", json={"input": {"prompt": "a [unsafe] cat"}}).json()
        clean_url = client.get(f"/v1/jobs/{clean['id']}").json()["output"]["image_url"]
        dirty_url = client.get(f"/v1/jobs/{dirty['id']}").json()["output"]["image_url"]

        def audit(**body: str) -> object:
            response = client.post("/v1/audit", json=body)
            assert response.status_code == 200, response.text
            return response.json()

        assert audit(image_url=clean_url, prompt="a cat") == {"approved": True}
        assert audit(image_url=dirty_url) == {
            "approved": False, "reason": "the job input contains the marker '[unsafe]'"}
        assert audit(image_url=clean_url, prompt="[unsafe]") == {
            "approved": False, "reason": "the prompt contains the marker '[unsafe]'"}
        assert audit(image_url="https://x.invalid/[unsafe].png") == {
            "approved": False, "reason": "the image URL contains the marker '[unsafe]'"}
        assert client.post("/v1/audit", json={"prompt": "x"}).status_code == 400
        assert client.post("/v1/audit", content=b"{").status_code == 400
        assert client.post("/v1/audit", json={"image_url": "u", "prompt": 3}).status_code == 400
        stats = client.get("/v1/stats").json()
    assert (stats["audits"], stats["audit_rejections"]) == (4, 3)


def test_without_a_marker_every_image_is_approved() -> None:
    with FakeApis() as api, httpx.Client(base_url=api.url) as client:
        answer = client.post("/v1/audit", json={"image_url": "https://x.invalid/[unsafe].png"})
        assert answer.json() == {"approved": True}
    with pytest.raises(ValueError, match="reject_marker must not be empty"):
        FakeApis(reject_marker="")
