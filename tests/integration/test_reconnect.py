"""The Store's pool after an outage: it connects again within a second of the database coming
back, however long the outage lasted (a failover is a few seconds of refused connections)."""

from __future__ import annotations

import anyio
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from taskd.errors import DatabaseUnavailable
from taskd.queue import Store
from taskd.queue.connection import RECONNECT_DELAY_MAX
from tests.system.proxy import CuttableProxy

pytestmark = pytest.mark.anyio

OUTAGE = 4.5  # seconds: psycopg_pool's own backoff would try at 0, 1, 3 and then 7 s


async def test_the_pool_connects_again_within_a_second_of_the_database_returning(
    database_url: str,
) -> None:
    parts = conninfo_to_dict(database_url)
    with CuttableProxy((str(parts["host"]), int(parts.get("port", 5432)))) as proxy:
        url = make_conninfo(database_url, host="127.0.0.1", port=str(proxy.port))
        own = await Store.open(url, min_size=1, max_size=2, connect_timeout=1,
                               checkout_timeout=0.3)
        try:
            await own.database_now()
            proxy.cut()
            failures = 0
            with anyio.move_on_after(OUTAGE):
                while True:  # the callers keep trying, as the daemon's components do
                    try:
                        await own.database_now()
                    except DatabaseUnavailable:
                        failures += 1
                    await anyio.sleep(0.1)
            assert failures > 0
            proxy.restore()
            restored = anyio.current_time()
            with anyio.fail_after(15):
                while True:
                    try:
                        await own.database_now()
                        break
                    except DatabaseUnavailable:
                        await anyio.sleep(0.05)
            took = anyio.current_time() - restored
        finally:
            await own.close()
    # The next attempt comes at most RECONNECT_DELAY_MAX (+10 % jitter) after the last failed
    # one; then a checkout and a query.
    assert took < RECONNECT_DELAY_MAX * 1.1 + 0.4, took
