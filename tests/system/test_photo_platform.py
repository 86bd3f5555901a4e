"""The photo-platform profile end to end: deploy/examples/photo-platform.toml in a real
`taskd run`, the fake image and audit APIs on loopback, tasks created through the HTTP API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskd.api import mint_token, serve_in_thread
from taskd.settings import Settings, load_settings
from taskd.testing import FakeApis
from tests.system.daemons import daemons, query, scalar, wait_for

PROFILE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "photo-platform.toml"
SECRET = "photo-platform-test-secret-0123456789abcdef"
MODEL = "Ana in a red linen dress"


@dataclass
class Platform:
    api: FakeApis
    http: httpx.Client  # the taskd API, as alice
    settings: Settings
    url: str  # the database

    def create(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/v1/tasks", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def task(self, task_id: int) -> dict[str, Any]:
        response = self.http.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        shown: dict[str, Any] = response.json()
        return shown

    def wait_ended(self, task_id: int) -> str:
        ended = wait_for(
            lambda: query(self.url, "SELECT status FROM taskd.tasks WHERE id = %s"
                          " AND completed_at IS NOT NULL", task_id),
            timeout=45, interval=0.1, message=f"task {task_id} to end")
        status: str = ended[0][0]
        return status

    def sql_urls(self, task_id: int) -> list[str | None]:
        urls: list[str | None] = scalar(self.url, "SELECT taskd.task_result_urls(%s)", task_id)
        return urls


@contextmanager
def platform(database_url: str, monkeypatch: pytest.MonkeyPatch,
             reject_marker: str) -> Iterator[Platform]:
    """The fake APIs, one daemon and the API, all configured by the profile; alice has a
    quota of 5."""
    for key in list(os.environ):
        if key.startswith("TASKD_"):
            monkeypatch.delenv(key)
    with FakeApis(job_seconds=0.3, reject_marker=reject_marker) as api:
        # What a deployment changes in the profile: where the APIs are, and (for a fast test)
        # how often to poll and how soon to retry.
        env = {
            "TASKD_CONFIG": str(PROFILE),
            "TASKD_QUEUES__IMAGES__BASE_URL": api.url,
            "TASKD_QUEUES__IMAGES__AUDIT_URL": api.audit_url,
            "TASKD_QUEUES__IMAGES__POLLING_INTERVAL": "0.05",
            "TASKD_QUEUES__IMAGES__RETRY_BASE": "0.1",
            "TASKD_HANDLERS": "{}",  # the profile's own handlers, and nothing else
            "TASKD_POLL_INTERVAL": "0.2",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings(database_url=database_url, api={"jwt_secret": SECRET})
        with daemons(database_url, 1, **env), serve_in_thread(settings, database_url) as served:
            admin = {"Authorization": "Bearer " + mint_token(settings.api, "root", admin=True,
                                                             ttl=600)}
            put = httpx.put(f"{served.url}/v1/accounts/alice", headers=admin, timeout=30,
                            json={"is_member": True, "quota_remaining": 5})
            assert put.status_code == 200, put.text
            token = mint_token(settings.api, "alice", ttl=600)
            with httpx.Client(base_url=served.url, timeout=30,
                              headers={"Authorization": f"Bearer {token}"}) as http:
                yield Platform(api, http, settings, database_url)


def test_a_model_pose12_task_ends_with_12_result_urls_in_pose_order_and_basic_clean_runs(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with platform(database_url, monkeypatch, reject_marker="[unsafe]") as p:
        poses = p.settings.api.templates["model_pose12"]
        task = p.create(kind="model_pose12", variables={"model": [MODEL]})
        clean = p.create(kind="basic_clean", subtasks=[
            {"image_url": "HTTPS://CDN.Example.com/shirt.png?utm_source=ad&w=800"},
            {"image_url": "https://cdn.example.com/trousers.png", "operations": ["denoise"]}])
        assert (task["queue"], task["progress"]["total"]) == ("images", 12)
        assert task["result_urls"] == [None] * 12
        assert p.wait_ended(task["id"]) == "completed"
        assert p.wait_ended(clean["id"]) == "completed"
        shown, cleaned = p.task(task["id"]), p.task(clean["id"])
        stats = p.api.stats()
        jobs = {job_id: p.api.job(job_id) for job_id in (f"job-{n}" for n in range(1, 13))}

    urls = shown["result_urls"]
    assert shown["status"] == "completed" and len(urls) == 12 and None not in urls
    assert p.sql_urls(task["id"]) == urls
    # In pose order, whatever order the jobs ended in: URL i is the image of pose i's prompt.
    prompt_of = {job["output"]["image_url"]: job["output"]["input"]["prompt"]
                 for job in jobs.values() if job is not None}
    assert [prompt_of[url] for url in urls] == [pose.format(model=MODEL) for pose in poses]
    assert stats.jobs == 12 and set(stats.submissions.values()) == {1}
    assert (stats.audits, stats.audit_rejections) == (12, 0)
    # basic_clean ran in-process: no job at the image API for it.
    assert cleaned["result_urls"] == ["https://cdn.example.com/shirt.png?w=800",
                                      "https://cdn.example.com/trousers.png"]
    assert p.sql_urls(clean["id"]) == cleaned["result_urls"]


def test_a_rejected_pose_fails_for_good_is_logged_and_the_task_is_refunded(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The marker is in the eighth pose's prompt only.
    with platform(database_url, monkeypatch, reject_marker="seated on a stool") as p:
        task = p.create(kind="model_pose12", variables={"model": [MODEL]})
        assert task["quota_remaining"] == 4
        assert p.wait_ended(task["id"]) == "failed"
        shown = p.task(task["id"])
        stats = p.api.stats()
        wait_for(lambda: scalar(database_url, "SELECT quota_remaining FROM taskd.accounts"
                                " WHERE user_id = 'alice'") == 5,
                 timeout=10, message="alice's quota refunded")

    rows = query(database_url, "SELECT status, attempt, error, result->>'image_url'"
                 " FROM taskd.task_subtasks(%s)", task["id"])
    assert [r[0] for r in rows] == ["completed"] * 7 + ["failed"] + ["completed"] * 4
    _, attempt, error, _ = rows[7]
    assert attempt == 1  # on its first attempt of 4: never retried
    assert error.startswith("ContentRejected: content audit rejected image "
                            "https://lumina.invalid/job-")
    assert error.endswith(": the prompt contains the marker 'seated on a stool'")
    assert shown["status"] == "failed" and shown["error"] == error
    assert shown["progress"] | {"percent": 0} == {"total": 12, "completed": 11, "failed": 1,
                                                  "cancelled": 0, "percent": 0}
    urls = shown["result_urls"]
    assert urls[7] is None and None not in urls[:7] + urls[8:]
    assert urls == [r[3] for r in rows] == p.sql_urls(task["id"])
    assert (stats.audits, stats.audit_rejections) == (12, 1)
    # The failure is counted in error_logs; the charge is refunded once.
    logged = query(database_url, "SELECT error_type, error_message, count FROM taskd.error_logs")
    assert logged == [("ContentRejected", error.removeprefix("ContentRejected: "), 1)]
    ledger = query(database_url, "SELECT reason, delta FROM taskd.quota_ledger"
                   " WHERE task_id = %s ORDER BY id", task["id"])
    assert ledger == [("deduct", -1), ("refund", 1)]
