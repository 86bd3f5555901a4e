"""Tests that prove the API test harness serves what the API documents."""

from __future__ import annotations

from tests.integration.api_support import Client, assert_error


def test_openapi_document_is_served_and_names_every_endpoint(client: Client) -> None:
    document = client().get("/openapi.json").json()
    paths = document["paths"]
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/subtasks",
            "/v1/tasks/{task_id}/cancel", "/v1/tasks/{task_id}/retry",
            "/v1/accounts/{user_id}", "/v1/status", "/healthz"} <= set(paths)
    assert "HTTPBearer" in document["components"]["securitySchemes"]


def test_healthz_answers_without_a_token(client: Client) -> None:
    assert client().get("/healthz").json() == {"status": "ok"}


def test_unknown_route_and_wrong_method_use_the_error_shape(client: Client) -> None:
    c = client("alice")
    assert_error(c.get("/v1/nothing-here"), 404, 4004)
    assert_error(c.delete("/v1/tasks"), 405, 4005)
