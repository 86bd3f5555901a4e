"""Secrets never reach the logs: the daemon and the API run with a database password, the lumina
queue's api_key and a JWT secret, exercise each, and their logs (debug level, text and JSON) hold
none of them."""

from __future__ import annotations

import httpx
import pytest
from psycopg.conninfo import conninfo_to_dict

from taskd.testing import FakeLumina
from tests.system.daemons import daemons, scalar, wait_for
from tests.system.test_api_process import api_process
from tests.system.test_handlers_lumina import lumina_env, submit

DB_PASSWORD = "dbpw-S3cr3t-7f1e9a"
API_KEY = "lumina-key-9c2b7d4e1a"
JWT_SECRET = "jwt-secret-4b8e0c2d6f1a3e5b7d9f0a2c4e6b8d0f"


def _with_password(conninfo: str) -> str:
    # The server trusts loopback, so the password is not checked, but it is in every connection
    # string taskd builds and logs around. The URL form, as an environment file holds it.
    p = conninfo_to_dict(conninfo)
    return (f"postgresql://{p['user']}:{DB_PASSWORD}@{p['host']}:{p.get('port', 5432)}"
            f"/{p['dbname']}")


@pytest.mark.system
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_daemon_and_api_logs_hold_no_secret(database_url: str, log_format: str) -> None:
    """The daemon logs JSON (the harness reads its "ready" event); the API either format."""
    url = _with_password(database_url)
    with FakeLumina(job_seconds=0.2, api_key=API_KEY) as lumina:
        env = lumina_env(lumina, 2, TASKD_QUEUES__LUMINA__API_KEY=API_KEY,
                         TASKD_LOG_LEVEL="debug", TASKD_API__JWT_SECRET=JWT_SECRET)
        with daemons(url, 1, **env) as (daemon,):
            submit(url, "lumina", "lumina", [{"prompt": "a cat"}, {"prompt": "a dog"}])
            wait_for(lambda: scalar(database_url, "SELECT count(*) FROM taskd.subtasks "
                                    "WHERE status = 'completed'") == 2, timeout=30,
                     message="lumina subtasks completed with the api key")
            assert lumina.stats().as_json()  # the fake answered (it refuses a wrong key: 401)
            with api_process(url, TASKD_LOG_LEVEL="debug", TASKD_LOG_FORMAT=log_format) \
                    as (api_url, proc):
                # The API process gets its own secret; a wrong token and a right one.
                bad = httpx.get(f"{api_url}/v1/tasks", timeout=10,
                                headers={"Authorization": f"Bearer {JWT_SECRET}"})
                assert bad.status_code == 401
                assert httpx.get(f"{api_url}/healthz", timeout=10).status_code == 200
                proc.terminate()
                proc.wait(timeout=30)
            daemon_log = daemon.log()
    api_logs = [p.read_text() for p in _api_logs()]
    assert "lumina" in daemon_log or "ready" in daemon_log
    for secret in (DB_PASSWORD, API_KEY, JWT_SECRET):
        assert secret not in daemon_log, f"{secret} in the daemon's log"
        for text in api_logs:
            assert secret not in text, f"{secret} in the API's log"


def _api_logs() -> list:  # type: ignore[type-arg]
    import tempfile
    from pathlib import Path

    logs = sorted(Path(tempfile.gettempdir()).glob("taskd-api-*.log"),
                  key=lambda p: p.stat().st_mtime)
    return logs[-1:]
