"""Handlers share a few HTTP clients, one picked per subtask, so that each pool stays small."""

from __future__ import annotations

import pytest

from taskd.handlers.clients import SHARDS, client_for, http_clients

pytestmark = pytest.mark.anyio


async def test_subtasks_are_spread_over_distinct_open_clients_closed_on_exit() -> None:
    async with http_clients() as clients:
        assert len(clients) == SHARDS and len({id(c) for c in clients}) == SHARDS
        assert not any(c.is_closed for c in clients)
        picked = [client_for(clients, subtask_id) for subtask_id in range(100, 100 + SHARDS)]
        assert {id(c) for c in picked} == {id(c) for c in clients}
        assert client_for(clients, 7) is client_for(clients, 7 + SHARDS)
    assert all(c.is_closed for c in clients)
