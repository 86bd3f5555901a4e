"""The API test harness (a live uvicorn on a free loopback port over this test's database),
and the tests that prove the harness itself serves what the API documents.

Other ``test_api_*`` modules import the fixtures from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from taskd.api import RunningApi, mint_token, serve_in_thread
from taskd.settings import ApiSettings, Settings

SECRET = "test-secret-that-is-long-enough-0123456789"

Client = Callable[..., httpx.Client]


def make_settings(database_url: str, **api: Any) -> Settings:
    return Settings(database_url=database_url,
                    api=ApiSettings(**{"jwt_secret": SECRET, "pool_size": 10, **api}))


@pytest.fixture
def api_settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def api(api_settings: Settings, database_url: str) -> Iterator[RunningApi]:
    """A live API on 127.0.0.1 over this test's database."""
    with serve_in_thread(api_settings, database_url) as running:
        yield running


@pytest.fixture
def client(api: RunningApi, api_settings: Settings) -> Iterator[Client]:
    """``client("alice")`` or ``client("root", admin=True)``: an authenticated HTTP client."""
    opened: list[httpx.Client] = []

    def make(user: str | None = None, *, admin: bool = False, token: str | None = None,
             ) -> httpx.Client:
        headers = {}
        if token is None and user is not None:
            token = mint_token(api_settings.api, user, admin=admin, ttl=600)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        c = httpx.Client(base_url=api.url, headers=headers, timeout=30)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def put_account(client: Client, user: str, *, member: bool = True, quota: int = 10) -> None:
    response = client("root", admin=True).put(
        f"/v1/accounts/{user}", json={"is_member": member, "quota_remaining": quota}
    )
    assert response.status_code == 200, response.text


def create(c: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("kind", "noop")
    if "prompts" not in body:
        body.setdefault("subtasks", [{"n": 1}])
    return c.post("/v1/tasks", json=body)


def assert_error(response: httpx.Response, status: int, code: int, message: str = "") -> Any:
    """The one error shape, with this status, errorCode and a message containing ``message``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"errorCode", "message", "details"}, body
    assert body["errorCode"] == code, body
    assert message in body["message"], body
    return body


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
