"""A task's result URLs, by SQL (taskd.task_result_urls) and in the API; a kind's template of
prompts (api.templates) makes its tasks' subtasks."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

from taskd.errors import ConfigError
from taskd.queue.store import Store
from taskd.settings import Settings, load_settings
from taskd.testing import drain
from taskd.types import Outcome
from tests.integration.api_support import Client, assert_error, make_settings, put_account

Conn = psycopg.Connection[tuple[Any, ...]]

POSES = ["{model}, front view", "{model}, side view", "{model}, back view"]
DRAIN_SETTINGS = Settings(handlers={})


@pytest.fixture
def api_settings(database_url: str) -> Settings:
    return make_settings(database_url, kinds={"noop": "standard", "model_pose12": "images"},
                         templates={"model_pose12": POSES})


def urls(db: Conn, task_id: int, max_urls: int | None = None) -> Any:
    return db.execute("SELECT taskd.task_result_urls(%s, %s)", (task_id, max_urls)).fetchone()


@pytest.mark.anyio
async def test_result_urls_are_each_subtasks_image_url_in_subtask_order(
    store: Store, database_url: str
) -> None:
    payloads = [{"image_url": "https://img.invalid/1.png"}, {"image_url": 7}, {"n": 3},
                {"image_url": "https://img.invalid/4.png"}]
    task_id = await store.submit("standard", "noop", payloads)
    with psycopg.connect(database_url, autocommit=True) as db:
        assert urls(db, task_id) == ([None, None, None, None],)  # nothing completed yet
        report = await drain(store, "standard", settings=DRAIN_SETTINGS)
        assert report.verdicts == {"completed": 4}
        # A URL that is not a string, or no URL, is a null in its subtask's place.
        assert urls(db, task_id) == (["https://img.invalid/1.png", None, None,
                                      "https://img.invalid/4.png"],)
        assert urls(db, task_id, 2) == (["https://img.invalid/1.png", None],)
        assert urls(db, 424242) == (None,)


@pytest.mark.anyio
async def test_result_urls_follow_the_subtasks_not_the_order_they_ended_in(
    store: Store, database_url: str
) -> None:
    images = [f"https://img.invalid/{n}.png" for n in range(1, 5)]
    task_id = await store.submit("images", "model_pose12", [{"pose": n} for n in range(4)])
    claimed = await store.claim_subtasks("images", "exec-1", 4, lease_timeout=60)
    assert len(claimed) == 4
    now = await store.database_now()
    # The last pose ends first and the first last; the third fails (no URL).
    for late, subtask in enumerate(reversed(claimed)):
        index = claimed.index(subtask)
        outcome = (Outcome(subtask.id, subtask.attempt, "failed", error="ContentRejected: no")
                   if index == 2 else
                   Outcome(subtask.id, subtask.attempt, "completed",
                           result_json=json.dumps({"image_url": images[index]})))
        applied = await store.record_outcomes("exec-1", [outcome],
                                              now=now + timedelta(seconds=late))
        assert applied == {subtask.id}
    with psycopg.connect(database_url, autocommit=True) as db:
        assert urls(db, task_id) == ([images[0], images[1], None, images[3]],)


def test_the_api_shows_result_urls_as_sql_does(
    client: Client, db: Conn, database_url: str
) -> None:
    put_account(client, "alice")
    alice = client("alice")
    created = alice.post("/v1/tasks", json={"kind": "noop", "subtasks": [
        {"image_url": "https://img.invalid/a.png"}, {"image_url": "https://img.invalid/b.png"},
        {"caption": "no image"}]})
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["result_urls"] == [None, None, None]

    async def run() -> None:
        store = await Store.open(database_url)
        try:
            await drain(store, "standard", settings=DRAIN_SETTINGS)
        finally:
            await store.close()

    anyio.run(run)
    shown = alice.get(f"/v1/tasks/{task['id']}").json()
    assert shown["result_urls"] == ["https://img.invalid/a.png", "https://img.invalid/b.png",
                                    None]
    assert urls(db, task["id"]) == (shown["result_urls"],)


def test_a_kind_with_a_template_makes_one_subtask_per_prompt(client: Client, db: Conn) -> None:
    put_account(client, "alice", quota=5)
    alice = client("alice")
    created = alice.post("/v1/tasks", json={"kind": "model_pose12",
                                            "variables": {"model": ["Ana in a red coat"]}})
    assert created.status_code == 201, created.text
    task = created.json()
    assert (task["queue"], task["progress"]["total"]) == ("images", 3)
    assert task["result_urls"] == [None, None, None]
    prompts = [row[0] for row in db.execute(
        "SELECT payload->>'prompt' FROM taskd.task_subtasks(%s)", (task["id"],))]
    assert prompts == ["Ana in a red coat, front view", "Ana in a red coat, side view",
                       "Ana in a red coat, back view"]
    assert task["quota_remaining"] == 4  # one task, one unit, however many poses


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"variables": {"model": ["x"]}, "prompts": ["p"]}, "prompts",
     "kind 'model_pose12' makes its subtasks from its template (api.templates.model_pose12): "
     "give variables, not prompts"),
    ({"variables": {"model": ["x"]}, "subtasks": [{}]}, "subtasks", "not subtasks"),
    ({}, "variables.model", "the template of kind 'model_pose12' needs the variable 'model'"),
    ({"variables": {"model": ["x"], "city": ["Oslo"]}}, "variables.city",
     "variable 'city' is used by no prompt"),
])
def test_a_template_request_that_is_not_only_variables_is_422(
    client: Client, db: Conn, body: dict[str, Any], field: str, message: str
) -> None:
    put_account(client, "alice")
    response = client("alice").post("/v1/tasks", json={"kind": "model_pose12", **body})
    error = assert_error(response, 422, 4001, message)
    assert error["details"][0]["field"] == field
    assert db.execute("SELECT count(*) FROM taskd.tasks").fetchone() == (0,)


def test_a_template_for_a_kind_the_api_does_not_accept_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"templates\.resize: .resize. is not one of the kinds"):
        load_settings(api={"kinds": {"noop": "standard"}, "templates": {"resize": ["x"]}})
    with pytest.raises(ConfigError, match=r"templates\.noop has no prompts"):
        load_settings(api={"kinds": {"noop": "standard"}, "templates": {"noop": []}})


def test_result_urls_read_only_max_urls_subtasks_of_the_id_range(db: Conn) -> None:
    """The function's own body, planned as it runs: the primary key's order serves ORDER BY,
    so a LIMIT of 10 reads 10 subtasks of a task of 5,000, with no sort of them all."""
    task = db.execute("SELECT taskd.submit_task('standard', 'noop', (SELECT jsonb_agg("
                      "jsonb_build_object('n', g)) FROM generate_series(1, 5000) g))").fetchone()
    assert task is not None
    db.execute("ANALYZE taskd.subtasks")
    body = db.execute("SELECT prosrc FROM pg_proc WHERE oid ="
                      " 'taskd.task_result_urls(bigint, integer)'::regprocedure").fetchone()
    assert body is not None
    query = (str(body[0]).replace("task_result_urls.task_id", "$1::bigint")
             .replace("task_result_urls.max_urls", "$2::integer"))
    db.execute(f"PREPARE urls_body(bigint, integer) AS {query}")  # type: ignore[arg-type]
    db.execute("SET plan_cache_mode = force_generic_plan")  # as a SQL function plans it
    plan = db.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE urls_body({}, 10)")
                      .format(sql.Literal(task[0]))).fetchone()
    assert plan is not None

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

    found = nodes(plan[0][0]["Plan"])
    scans = [n for n in found if n.get("Relation Name") == "subtasks"]
    assert [n["Index Name"] for n in scans] == ["subtasks_pkey"], found
    assert scans[0]["Actual Rows"] == 10, found
    assert not any(n["Node Type"] == "Sort" for n in found), found
    assert urls(db, task[0], 10) == ([None] * 10,)
