"""Helpers for the API tests: settings, accounts, requests, the error shape.

The fixtures (``api_settings``, ``api``, ``client``, ``db``) live in this folder's conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from taskd.settings import ApiSettings, Settings

SECRET = "test-secret-that-is-long-enough-0123456789"

Client = Callable[..., httpx.Client]


def make_settings(database_url: str, **api: Any) -> Settings:
    return Settings(database_url=database_url,
                    api=ApiSettings(**{"jwt_secret": SECRET, "pool_size": 10, **api}))


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


