"""Fixtures of the API tests: a live uvicorn on a free loopback port over this test's database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from taskd.api import RunningApi, mint_token, serve_in_thread
from taskd.settings import Settings
from tests.integration.api_support import Client, make_settings


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
