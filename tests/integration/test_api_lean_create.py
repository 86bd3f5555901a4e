"""POST /v1/tasks's lean path (taskd.api.tasks.CreateRoute): the common create skips FastAPI's
handler, and answers exactly as that handler does; every other request goes through it."""

from __future__ import annotations

import json
import re
from typing import Any

import fastapi.routing
import pytest

from tests.integration.api_support import Client, put_account

# The values that are the task's own: compared by form, not by value.
OWN = {"id", "created_at", "updated_at", "quota_remaining"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def handled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests FastAPI's own handler solved the dependencies of."""
    seen: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["request"].url.path)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    return seen


def _pairs(text: str) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = json.loads(text, object_pairs_hook=list)
    return pairs


def test_the_common_create_skips_fastapis_handler_and_answers_as_it_does(
    client: Client, handled: list[str]
) -> None:
    put_account(client, "alice")
    alice = client("alice")
    body = {"name": "n", "kind": "noop", "priority": 3, "params": {"p": [1.5, None, "é"]},
            "subtasks": [{"batch_size": 2, "n": 1}, {"n": 2}]}
    handled.clear()
    lean = alice.post("/v1/tasks", json=body)
    assert lean.status_code == 201, lean.text
    assert handled == []
    general = alice.post("/v1/tasks", json=body, headers={"Idempotency-Key": "k1"})
    assert general.status_code == 201, general.text
    assert handled == ["/v1/tasks"]
    assert lean.headers["content-type"] == general.headers["content-type"]
    ours, theirs = _pairs(lean.text), _pairs(general.text)
    assert [k for k, _ in ours] == [k for k, _ in theirs]
    assert [(k, v) for k, v in ours if k not in OWN] == [
        (k, v) for k, v in theirs if k not in OWN]
    for (key, mine), (_, other) in zip(ours, theirs, strict=True):
        if key in OWN:
            assert type(mine) is type(other), key
            if key.endswith("_at"):
                assert TIMESTAMP.match(mine) and TIMESTAMP.match(other), (mine, other)
    assert dict(ours)["quota_remaining"] == 9 and dict(theirs)["quota_remaining"] == 8


@pytest.mark.parametrize(("path", "headers", "body"), [
    ("/v1/tasks?x=1", {}, {"kind": "noop", "subtasks": [{}]}),  # an unknown query parameter
    ("/v1/tasks", {"Content-Type": "text/plain"}, {"kind": "noop", "subtasks": [{}]}),
    ("/v1/tasks", {}, {"kind": "noop", "subtasks": [{}], "extra": 1}),  # fails validation
    ("/v1/tasks", [("Content-Type", "text/plain"), ("Content-Type", "application/json")],
     {"kind": "noop", "subtasks": [{}]}),  # the first Content-Type is the one FastAPI reads
    ("/v1/tasks", {"Idempotency-Key": "a b"}, {"kind": "noop", "subtasks": [{}]}),
])
def test_every_other_request_goes_through_fastapis_handler(
    client: Client, handled: list[str], path: str,
    headers: dict[str, str] | list[tuple[str, str]], body: Any,
) -> None:
    put_account(client, "alice")
    handled.clear()
    sent = (headers if isinstance(headers, list)
            else list({"Content-Type": "application/json", **headers}.items()))
    refused = client("alice").post(path, content=json.dumps(body), headers=sent)
    assert refused.status_code in (400, 415, 422), refused.text
    assert handled == ["/v1/tasks"]
