"""/v1/queues: admins list, pause and resume queues; plain users may not; an unknown queue is
a 404 with nothing written."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.api_support import Client, assert_error, create, put_account


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/queues"), ("POST", "/v1/queues/standard/pause"),
    ("POST", "/v1/queues/standard/resume"),
])
def test_queue_endpoints_are_for_admins(client: Client, method: str, path: str) -> None:
    assert_error(client("alice").request(method, path), 403, 4003, "admin role required")


def test_pausing_an_unknown_queue_is_404_and_writes_nothing(
    client: Client, db: psycopg.Connection[Any]
) -> None:
    admin = client("root", admin=True)
    assert_error(admin.post("/v1/queues/nope/pause"), 404, 4004, "unknown queue 'nope'")
    assert_error(admin.post("/v1/queues/nope/resume"), 404, 4004, "unknown queue 'nope'")
    assert_error(admin.post("/v1/queues/Not-A-Name/pause"), 422, 4001)
    assert db.execute("SELECT count(*) FROM taskd.queue_controls").fetchone() == (0,)


def test_an_admin_pauses_and_resumes_a_configured_queue(
    client: Client, db: psycopg.Connection[Any]
) -> None:
    admin = client("root", admin=True)
    paused = admin.post("/v1/queues/standard/pause")
    assert paused.status_code == 200, paused.text
    body = paused.json()
    assert (body["queue"], body["paused"], body["paused_by"], body["changed"]) == (
        "standard", True, "root", True)
    assert admin.post("/v1/queues/standard/pause").json()["changed"] is False
    # Submissions are still accepted while paused.
    put_account(client, "alice")
    assert create(client("alice")).status_code == 201
    listed = admin.get("/v1/queues").json()
    assert [(q["queue"], q["paused"]) for q in listed] == [("standard", True)]
    status = admin.get("/v1/status").json()
    assert status["queues"]["standard"]["paused"] is True
    resumed = admin.post("/v1/queues/standard/resume").json()
    assert (resumed["paused"], resumed["changed"], resumed["resumed_at"] is not None) == (
        False, True, True)
    assert db.execute("SELECT paused FROM taskd.queue_controls").fetchall() == [(False,)]


def test_the_status_shows_dependencies_and_unique_key_duplicates(
    client: Client, db: psycopg.Connection[Any]
) -> None:
    first = db.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]',"
                       " unique_key => 'k')").fetchone()
    assert db.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]',"
                      " unique_key => 'k')").fetchone() == first
    db.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]', after => %s::bigint[])",
               [[first[0]] if first else []])
    status = client("root", admin=True).get("/v1/status").json()
    standard = status["queues"]["standard"]
    assert (standard["waiting_on_dependencies"], standard["unique_duplicates"]) == (1, 1)
