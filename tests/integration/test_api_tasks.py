"""Tasks through the API: create, read, list, subtasks, cancel, retry; accounts and status."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from taskd.settings import Settings
from tests.integration.api_support import (
    Client,
    assert_error,
    create,
    put_account,
)

Conn = psycopg.Connection[tuple[Any, ...]]


def counts(db: Conn) -> tuple[int, int, int, int]:
    row = db.execute(
        "SELECT (SELECT count(*) FROM taskd.tasks), (SELECT count(*) FROM taskd.subtasks),"
        " (SELECT count(*) FROM taskd.quota_ledger),"
        " (SELECT coalesce(sum(quota_remaining), 0) FROM taskd.accounts)"
    ).fetchone()
    assert row is not None
    return row  # type: ignore[return-value]


def test_create_takes_one_quota_unit_and_writes_the_ledger(client: Client, db: Conn) -> None:
    put_account(client, "alice", quota=3)
    response = create(client("alice"), name="first", subtasks=[{"n": 1}, {"n": 2}],
                      params={"seed": 7})
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["status"] == "pending" and task["queue"] == "standard" and task["priority"] == 1
    assert task["progress"] == {"total": 2, "completed": 0, "failed": 0, "cancelled": 0,
                                "percent": 0.0}
    assert task["quota_remaining"] == 2 and task["replayed"] is False
    assert task["params"] == {"seed": 7} and task["user_id"] == "alice"
    ledger = db.execute("SELECT user_id, task_id, delta, reason FROM taskd.quota_ledger"
                        " WHERE task_id IS NOT NULL").fetchall()
    assert ledger == [("alice", task["id"], -1, "deduct")]
    row = db.execute("SELECT quota_cost FROM taskd.tasks WHERE id = %s", (task["id"],))
    assert row.fetchone() == (1,)


def test_prompts_expand_over_every_combination_of_variables(client: Client, db: Conn) -> None:
    put_account(client, "alice")
    response = create(client("alice"), kind="lumina",
                      prompts=["a {animal} in {place}", "just {animal}"],
                      variables={"animal": ["cat", "dog"], "place": ["Rome", 7]},
                      batch_size=4)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["queue"] == "lumina"
    assert task["progress"]["total"] == 2 * 2 + 2
    assert task["batch_size"] == 4 and task["total_images"] == 6 * 4
    prompts = [r[0] for r in db.execute(
        "SELECT payload->>'prompt' FROM taskd.subtasks WHERE task_id = %s ORDER BY id",
        (task["id"],))]
    # "just {animal}" uses no {place}: it is not multiplied by the places.
    assert prompts == ["a cat in Rome", "a cat in 7", "a dog in Rome", "a dog in 7",
                       "just cat", "just dog"]
    payload = db.execute("SELECT payload FROM taskd.subtasks WHERE task_id = %s ORDER BY id"
                         " LIMIT 1", (task["id"],)).fetchone()
    assert payload == ({"prompt": "a cat in Rome", "batch_size": 4,
                        "variables": {"animal": "cat", "place": "Rome"}},)
    last = db.execute("SELECT payload FROM taskd.subtasks WHERE task_id = %s ORDER BY id DESC"
                      " LIMIT 1", (task["id"],)).fetchone()
    assert last == ({"prompt": "just dog", "batch_size": 4, "variables": {"animal": "dog"}},)


def test_a_prompt_without_placeholders_is_one_subtask(client: Client, db: Conn) -> None:
    put_account(client, "alice")
    task = create(client("alice"), kind="lumina", prompts=["a {city} at night", "the sea"],
                  variables={"city": ["Rome", "Oslo", "Lima"]}).json()
    assert task["progress"]["total"] == 3 + 1
    prompts = [r[0] for r in db.execute(
        "SELECT payload->>'prompt' FROM taskd.subtasks WHERE task_id = %s ORDER BY id",
        (task["id"],))]
    assert prompts == ["a Rome at night", "a Oslo at night", "a Lima at night", "the sea"]


@pytest.mark.parametrize(("body", "field"), [
    ({"prompts": ["x {v}"], "variables": {"v": [str(i) for i in range(100_001)]}}, "variables"),
    ({"prompts": ["{a}{b}"], "variables": {"a": list(range(400)), "b": list(range(400))}},
     "variables"),
    ({"prompts": []}, "prompts"),
    ({"prompts": [""]}, "prompts[0]"),
    ({"prompts": ["x {v}"], "variables": {"v": ["a"], "w": ["b"]}}, "variables.w"),
    ({"prompts": ["x"], "variables": {"v": [True]}}, "variables.v[0]"),
    ({"prompts": ["x"], "variables": {"v": [{"nested": 1}]}}, "variables.v[0]"),
    ({"prompts": ["x"], "variables": {"v": []}}, "variables.v"),
    ({"prompts": ["x"], "variables": {"bad name": ["a"]}}, "variables"),
    ({"subtasks": [{"n": 1}], "priority": 1001}, "priority"),
    ({"subtasks": [{"n": 1}], "priority": -1001}, "priority"),
    ({"subtasks": [{"n": 1}], "surprise": 1}, "surprise"),
    ({"subtasks": []}, "subtasks"),
    ({"subtasks": [1, 2]}, "subtasks[0]"),
    ({"subtasks": [{"n": 1}], "prompts": ["x"]}, "subtasks"),
    ({}, "subtasks"),
    ({"subtasks": [{"n": 1}], "batch_size": 2}, "batch_size"),
    ({"subtasks": [{"n": "a\u0000b"}]}, "payloads[0]"),
    ({"subtasks": [{"n": 1}], "name": "nul\u0000name"}, "name"),
    ({"subtasks": [{"n": 1}], "queue": "Not A Queue"}, "queue"),
    ({"subtasks": [{"n": 1}], "queue": "elsewhere"}, "queue"),
])
def test_bad_input_is_422_naming_the_field_and_writes_nothing(
    client: Client, db: Conn, body: dict[str, Any], field: str
) -> None:
    put_account(client, "alice", quota=5)
    before = counts(db)
    body.setdefault("kind", "lumina" if "prompts" in body else "noop")
    response = client("alice").post("/v1/tasks", json=body)
    error = assert_error(response, 422, 4001)
    fields = [d["field"] for d in error["details"]]
    assert any(f == field or f.startswith(field) for f in fields), (field, error)
    assert counts(db) == before


def test_unknown_kind_is_invalid_task_type(client: Client, db: Conn) -> None:
    put_account(client, "alice")
    before = counts(db)
    assert_error(create(client("alice"), kind="rm -rf"), 400, 4001, "invalid task type")
    assert counts(db) == before


def test_account_rules_4004_4003_4002(client: Client, db: Conn) -> None:
    assert_error(create(client("nobody")), 404, 4004, "user not found")
    put_account(client, "guest", member=False, quota=5)
    assert_error(create(client("guest")), 403, 4003, "please activate membership first")
    put_account(client, "broke", quota=0)
    assert_error(create(client("broke")), 403, 4002, "quota exhausted")
    assert db.execute("SELECT count(*) FROM taskd.tasks").fetchone() == (0,)


def test_malformed_json_and_wrong_content_are_4001(client: Client) -> None:
    put_account(client, "alice")
    c = client("alice")
    response = c.post("/v1/tasks", content=b"{oops", headers={"content-type": "application/json"})
    assert_error(response, 422, 4001)
    assert_error(c.post("/v1/tasks", content=b"[]",
                        headers={"content-type": "application/json"}), 422, 4001)


def test_body_over_the_limit_is_413_and_writes_nothing(client: Client, db: Conn) -> None:
    put_account(client, "alice")
    big = {"kind": "noop", "subtasks": [{"blob": "x" * (3 * 1024 * 1024)}]}
    assert_error(client("alice").post("/v1/tasks", json=big), 413, 4013)

    def chunks() -> Any:  # no Content-Length: the streamed size is what counts
        for _ in range(40):
            yield b"x" * 65536

    assert_error(client("alice").post("/v1/tasks", content=chunks()), 413, 4013)
    assert db.execute("SELECT count(*) FROM taskd.tasks").fetchone() == (0,)


def test_sql_metacharacters_are_plain_data(client: Client, db: Conn) -> None:
    evil = "x'); DROP TABLE taskd.tasks; --"
    put_account(client, evil)
    task = create(client(evil), name=evil, params={evil: evil},
                  subtasks=[{"q": evil}]).json()
    shown = client(evil).get(f"/v1/tasks/{task['id']}").json()
    assert shown["name"] == evil and shown["params"] == {evil: evil}
    assert client(evil).get("/v1/tasks", params={"kind": evil}).json()["total"] == 0
    assert db.execute("SELECT count(*) FROM taskd.tasks").fetchone() == (1,)


@pytest.mark.parametrize("path", ["/v1/tasks/abc", "/v1/tasks/1.5", "/v1/tasks/0",
                                  "/v1/tasks/99999999999999999999", "/v1/tasks/abc/cancel",
                                  "/v1/tasks/-1/subtasks"])
def test_ids_that_are_not_positive_integers_are_422(client: Client, path: str) -> None:
    method = "POST" if path.endswith("cancel") else "GET"
    assert_error(client("alice").request(method, path), 422, 4001)


def test_unknown_task_is_404(client: Client) -> None:
    for method, suffix in [("GET", ""), ("GET", "/subtasks"), ("POST", "/cancel"),
                           ("POST", "/retry")]:
        assert_error(client("alice").request(method, f"/v1/tasks/424242{suffix}"),
                     404, 4004, "task not found")


def test_read_shows_progress_results_and_the_latest_error(client: Client, db: Conn) -> None:
    put_account(client, "alice")
    task_id = create(client("alice"), subtasks=[{"n": i} for i in range(3)]).json()["id"]
    ids = [r[0] for r in db.execute(
        "SELECT id FROM taskd.subtasks WHERE task_id = %s ORDER BY id", (task_id,))]
    db.execute("UPDATE taskd.subtasks SET status = 'completed', result = '{\"ok\": 1}',"
               " completed_at = now() WHERE id = %s", (ids[0],))
    db.execute("UPDATE taskd.subtasks SET status = 'failed', error = 'boom',"
               " completed_at = now() WHERE id = %s", (ids[1],))
    shown = client("alice").get(f"/v1/tasks/{task_id}").json()
    assert shown["status"] == "processing"
    assert shown["progress"]["completed"] == 1 and shown["progress"]["failed"] == 1
    assert shown["results"] == [{"ok": 1}] and shown["error"] == "boom"
    assert set(shown) >= {"id", "name", "kind", "queue", "status", "priority", "params",
                          "progress", "results", "error", "created_at", "updated_at",
                          "completed_at"}


def test_list_is_newest_first_filtered_and_paginated_with_a_total(client: Client) -> None:
    put_account(client, "alice", quota=20)
    put_account(client, "bob", quota=5)
    alice = client("alice")
    ids = [create(alice, name=f"t{i}", kind="lumina" if i % 2 else "noop").json()["id"]
           for i in range(7)]
    create(client("bob"))
    page = alice.get("/v1/tasks", params={"limit": 3}).json()
    assert [t["id"] for t in page["items"]] == ids[::-1][:3] and page["total"] == 7
    seen = [t["id"] for t in page["items"]]
    while page["next_cursor"]:
        page = alice.get("/v1/tasks", params={"limit": 3, "cursor": page["next_cursor"]}).json()
        seen += [t["id"] for t in page["items"]]
    assert seen == ids[::-1]
    lumina = alice.get("/v1/tasks", params={"kind": "lumina"}).json()
    assert lumina["total"] == 3 and all(t["kind"] == "lumina" for t in lumina["items"])
    assert alice.get("/v1/tasks", params={"status": "completed"}).json()["total"] == 0
    assert_error(alice.get("/v1/tasks", params={"limit": 101}), 422, 4001)
    assert_error(alice.get("/v1/tasks", params={"status": "bogus"}), 422, 4001)
    assert_error(alice.get("/v1/tasks", params={"cursor": "x"}), 422, 4001)
    assert_error(alice.get("/v1/tasks", params={"limt": 3}), 422, 4001, "limt")
    admin_view = client("root", admin=True).get("/v1/tasks", params={"user_id": "bob"}).json()
    assert admin_view["total"] == 1


def test_subtasks_are_paginated_in_id_order(client: Client) -> None:
    put_account(client, "alice")
    task_id = create(client("alice"), subtasks=[{"n": i} for i in range(5)]).json()["id"]
    c = client("alice")
    page = c.get(f"/v1/tasks/{task_id}/subtasks", params={"limit": 2}).json()
    seen = [s["payload"]["n"] for s in page["items"]]
    assert page["total"] == 5
    while page["next_cursor"]:
        page = c.get(f"/v1/tasks/{task_id}/subtasks",
                     params={"limit": 2, "cursor": page["next_cursor"]}).json()
        seen += [s["payload"]["n"] for s in page["items"]]
    assert seen == [0, 1, 2, 3, 4]


def test_cancel_cancels_pending_and_asks_running_to_stop(client: Client, db: Conn) -> None:
    put_account(client, "alice")
    task_id = create(client("alice"), subtasks=[{"n": 1}, {"n": 2}]).json()["id"]
    first = db.execute("SELECT min(id) FROM taskd.subtasks WHERE task_id = %s",
                       (task_id,)).fetchone()
    assert first is not None
    db.execute("UPDATE taskd.subtasks SET status = 'processing', locked_by = 'x', attempt = 1"
               " WHERE id = %s", (first[0],))
    response = client("alice").post(f"/v1/tasks/{task_id}/cancel")
    assert response.json() == {"id": task_id, "cancelled": 1, "stopping": 1}
    assert db.execute("SELECT cancel_requested FROM taskd.subtasks WHERE id = %s",
                      (first[0],)).fetchone() == (True,)
    db.execute("UPDATE taskd.subtasks SET status = 'cancelled', locked_by = NULL"
               " WHERE id = %s", (first[0],))
    assert_error(client("alice").post(f"/v1/tasks/{task_id}/cancel"), 409, 4009, "ended")


def _fail_all(db: Conn, task_id: int) -> None:
    db.execute("UPDATE taskd.subtasks SET status = 'failed', error = 'boom',"
               " completed_at = now() WHERE task_id = %s", (task_id,))


def test_retry_after_a_refund_needs_quota_unless_an_admin_asks(client: Client, db: Conn) -> None:
    put_account(client, "alice", quota=1)
    c = client("alice")
    task_id = create(c).json()["id"]
    _fail_all(db, task_id)
    create(c)  # spends the refunded unit
    assert_error(c.post(f"/v1/tasks/{task_id}/retry"), 403, 4002, "quota exhausted")
    assert db.execute("SELECT status FROM taskd.subtasks WHERE task_id = %s",
                      (task_id,)).fetchall() == [("failed",)]
    admin = client("root", admin=True).post(f"/v1/tasks/{task_id}/retry").json()
    assert admin == {"id": task_id, "retried": 1, "quota_taken": 0}


def test_put_account_creates_updates_and_writes_each_change_to_the_ledger(
    client: Client, db: Conn
) -> None:
    admin = client("root", admin=True)
    first = admin.put("/v1/accounts/carol", json={"is_member": False, "quota_remaining": 5})
    assert first.json()["created"] is True and first.json()["quota_remaining"] == 5
    second = admin.put("/v1/accounts/carol", json={"is_member": True, "quota_remaining": 2})
    assert second.json()["created"] is False and second.json()["is_member"] is True
    admin.put("/v1/accounts/carol", json={"is_member": True, "quota_remaining": 2})
    ledger = db.execute("SELECT delta, reason FROM taskd.quota_ledger WHERE user_id = 'carol'"
                        " ORDER BY id").fetchall()
    assert ledger == [(5, "adjust"), (-3, "adjust")]
    for bad in ({"is_member": True, "quota_remaining": -1},
                {"is_member": True, "quota_remaining": 2**31},
                {"is_member": "yes", "quota_remaining": 1},
                {"is_member": True}):
        assert_error(admin.put("/v1/accounts/carol", json=bad), 422, 4001)
    assert client("carol").get("/v1/accounts/carol").json()["quota_remaining"] == 2
    assert_error(admin.get("/v1/accounts/nobody"), 404, 4004, "user not found")


def test_status_reports_queues_executors_tasks_rate_and_database(
    client: Client, db: Conn
) -> None:
    put_account(client, "alice")
    create(client("alice"), subtasks=[{"n": 1}, {"n": 2}])
    db.execute("INSERT INTO taskd.executors (id, hostname, pid, version, concurrency, running)"
               " VALUES ('e1', 'h', 1, '0', '{\"standard\": 10}', '{\"standard\": 3}')")
    status = client("root", admin=True).get("/v1/status").json()
    assert status["health"] == "ok" and status["database"]["status"] == "ok"
    assert status["queues"]["standard"]["concurrency"] == 10
    assert status["queues"]["standard"]["running"] == 3
    assert status["queues"]["standard"]["pending"] == 2
    assert status["tasks"] == {"pending": 1, "processing": 0, "completed": 0, "failed": 0,
                               "cancelled": 0}
    assert status["subtasks"] == {"pending": 2, "processing": 0, "completed": 0, "failed": 0,
                                  "cancelled": 0}
    assert status["executors"] == {"running": 1}
    assert status["uptime_seconds"] >= 0 and status["version"]
    assert status["processing_rate"]["window_seconds"] == 60


def test_status_does_not_count_a_running_executor_with_a_stale_heartbeat_as_live(
    client: Client, db: Conn, api_settings: Settings
) -> None:
    """An executor that died with no peer left to mark it dead still says 'running'; its
    heartbeat, older than executor_dead_after, says otherwise (as in `taskd status`)."""
    put_account(client, "alice")
    create(client("alice"), subtasks=[{"n": 1}])
    db.execute("INSERT INTO taskd.executors (id, hostname, pid, version, concurrency, running,"
               " last_heartbeat_at) VALUES ('e1', 'h', 1, '0', '{\"standard\": 10}',"
               " '{\"standard\": 3}', now() - make_interval(secs => %s))",
               (api_settings.executor_dead_after + 30,))
    status = client("root", admin=True).get("/v1/status").json()
    assert status["health"] == "degraded"
    assert status["queues"]["standard"]["concurrency"] == 0
    assert status["queues"]["standard"]["running"] == 0
    assert status["queues"]["standard"]["pending"] == 1
    assert status["executors"] == {"running": 1}  # by the status its row records
