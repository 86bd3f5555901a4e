"""Handlers share a few httpx clients, one picked per subtask so that each pool stays small,
and one aiohttp session."""

from __future__ import annotations

import pytest

from taskd.handlers.clients import SHARDS, http_clients

pytestmark = pytest.mark.anyio


async def test_subtasks_are_spread_over_distinct_open_clients_all_closed_on_exit() -> None:
    async with http_clients() as clients:
        pool = clients.clients
        assert len(pool) == SHARDS and len({id(c) for c in pool}) == SHARDS
        assert not any(c.is_closed for c in pool) and not clients.session.closed
        picked = [clients.client_for(subtask_id) for subtask_id in range(100, 100 + SHARDS)]
        assert {id(c) for c in picked} == {id(c) for c in pool}
        assert clients.client_for(7) is clients.client_for(7 + SHARDS)
    assert all(c.is_closed for c in pool) and clients.session.closed
