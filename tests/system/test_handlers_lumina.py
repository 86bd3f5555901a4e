"""The lumina and entry-point handlers inside real `taskd run` processes, against real servers."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from taskd.queue import Store
from taskd.testing import FakeLumina
from tests.system.daemons import daemons, query, scalar, wait_for

# Short timings so that rescue happens within seconds.
FAST = {
    "TASKD_HEARTBEAT_INTERVAL": "0.5",
    "TASKD_LEASE_TIMEOUT": "3",
    "TASKD_RESCUE_INTERVAL": "0.5",
    "TASKD_EXECUTOR_DEAD_AFTER": "2",
    "TASKD_POLL_INTERVAL": "0.5",
    "TASKD_HANDLERS": "{}",
}


def lumina_env(api: FakeLumina, limit: int, **extra: str) -> dict[str, str]:
    """A lumina queue pinned at ``limit`` (the scaler cannot move it) on the fake API."""
    return {
        **FAST,
        "TASKD_QUEUES__LUMINA__BASE_URL": api.url,
        "TASKD_QUEUES__LUMINA__INITIAL": str(limit),
        "TASKD_QUEUES__LUMINA__MAX": str(limit),
        "TASKD_QUEUES__LUMINA__POLLING_INTERVAL": "0.2",
        "TASKD_QUEUES__LUMINA__MAX_POLLS": "200",
        "TASKD_QUEUES__LUMINA__TIMEOUT": "60",
        "TASKD_QUEUES__LUMINA__RETRY_BASE": "0.2",
        "TASKD_QUEUES__LUMINA__RETRY_MAX": "2",
        **extra,
    }


def submit(url: str, queue: str, kind: str, payloads: list[dict[str, Any]],
           max_attempts: int = 3) -> int:
    async def go() -> int:
        store = await Store.open(url)
        try:
            return await store.submit(queue, kind, payloads, max_attempts=max_attempts)
        finally:
            await store.close()

    return anyio.run(go)


def counts(url: str) -> dict[str, int]:
    return dict(query(url, "SELECT status, count(*) FROM taskd.subtasks GROUP BY status"))


def references(url: str) -> set[str]:
    return {f"taskd-subtask-{row[0]}" for row in query(url, "SELECT id FROM taskd.subtasks")}


@pytest.mark.slow
def test_200_lumina_subtasks_with_2s_jobs_and_10_percent_5xx_all_complete(
    database_url: str,
) -> None:
    total, limit = 200, 40
    with FakeLumina(job_seconds=2.0, transient_rate=0.1, seed=1) as api:
        submit(database_url, "lumina", "lumina", [{"prompt": f"p{i}"} for i in range(total)])
        with daemons(database_url, 1, **lumina_env(api, limit)):
            wait_for(lambda: counts(database_url).get("completed", 0) == total, timeout=120,
                     interval=0.5, message=f"{total} lumina subtasks completed")
        stats = api.stats()
    assert counts(database_url) == {"completed": total}
    assert stats.transient_errors > 0
    assert set(stats.submissions) == references(database_url)
    assert set(stats.submissions.values()) == {1}
    assert stats.max_in_flight <= limit
    outputs = query(database_url, "SELECT result->'input'->>'prompt' FROM taskd.subtasks")
    assert sorted(row[0] for row in outputs) == sorted(f"p{i}" for i in range(total))


def test_jobs_in_flight_at_the_api_never_exceed_the_queue_limit(database_url: str) -> None:
    limit = 3
    with FakeLumina(job_seconds=0.4) as api:
        submit(database_url, "lumina", "lumina", [{"n": i} for i in range(12)])
        with daemons(database_url, 1, **lumina_env(api, limit)):
            wait_for(lambda: counts(database_url).get("completed", 0) == 12, timeout=60,
                     message="12 lumina subtasks completed")
        stats = api.stats()
    # Reaching the limit shows the measurement can see it; never more is the point.
    assert stats.max_in_flight == limit
    assert stats.jobs == 12


@pytest.mark.slow
def test_kill_9_after_submission_resumes_polling_and_never_submits_twice(
    database_url: str,
) -> None:
    count = 10
    with FakeLumina(job_seconds=4.0) as api:
        submit(database_url, "lumina", "lumina", [{"n": i} for i in range(count)])
        env = lumina_env(api, count)
        with daemons(database_url, 1, **env) as (victim,):
            # Every subtask has submitted and checkpointed its job; none has finished.
            wait_for(lambda: scalar(database_url, "SELECT count(*) FROM taskd.subtasks"
                                    " WHERE state->>'job_id' IS NOT NULL") == count,
                     timeout=30, message="every job id checkpointed")
            victim.kill()
        assert counts(database_url) == {"processing": count}
        with daemons(database_url, 1, **env) as (survivor,):
            wait_for(lambda: counts(database_url).get("completed", 0) == count, timeout=60,
                     interval=0.2, message="resumed subtasks completed")
            resumed = [e for e in survivor.events()
                       if e.get("message", "").startswith("resuming lumina job")]
        stats = api.stats()
    assert set(stats.submissions) == references(database_url)
    assert set(stats.submissions.values()) == {1}
    assert stats.jobs == count
    assert len(resumed) == count
    # The crash gave each its attempt back and was counted; one crash runs them in parallel.
    assert query(database_url, "SELECT DISTINCT attempt, crashes FROM taskd.subtasks") == [(1, 1)]


def test_an_entry_point_handler_from_an_installed_package_is_found_and_run(
    database_url: str,
) -> None:
    submit(database_url, "standard", "example-echo", [{"word": "hi"}])
    submit(database_url, "standard", "example-shout", [{"text": "quiet"}])
    with daemons(database_url, 1, **FAST):
        wait_for(lambda: counts(database_url).get("completed", 0) == 2, timeout=30,
                 message="both entry-point subtasks completed")
    results = dict(query(database_url, "SELECT kind, result FROM taskd.subtasks"))
    assert results == {
        "example-echo": {"echo": {"word": "hi"}, "handled_by": "taskd_example_handlers.echo"},
        "example-shout": {"text": "QUIET"},
    }
