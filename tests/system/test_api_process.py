"""`taskd api` as a real process: start, serve, SIGTERM; refusals; `taskd api token`; and the
refund race between two real daemons, the rescuer and the API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.system.daemons import daemons, query, scalar, wait_for

SECRET = "system-test-secret-0123456789abcdef"


def _env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    return {**clean, **extra}


def taskd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "taskd", *args], env=_env(**env),
                          capture_output=True, text=True, timeout=60, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def api_process(database_url: str, **env: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m taskd api`` on a free port; yields (url, process) once /healthz answers."""
    port = _free_port()
    log = Path(tempfile.mkstemp(prefix="taskd-api-", suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskd", "api"], stdout=out, stderr=subprocess.STDOUT,
            text=True, env=_env(TASKD_DATABASE_URL=database_url, TASKD_API__JWT_SECRET=SECRET,
                                TASKD_API__ADDR=f"127.0.0.1:{port}", **env),
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"taskd api exited {proc.returncode}: {log.read_text()}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, timeout=30, message="taskd api to answer /healthz")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _token(user: str, *, admin: bool = False) -> str:
    args = ["api", "token", "--user", user, "--ttl", "10m"] + (["--admin"] if admin else [])
    done = taskd(*args, TASKD_API__JWT_SECRET=SECRET)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_token_prints_only_a_token_that_the_api_accepts() -> None:
    done = taskd("api", "token", "--user", "alice", "--admin", "--ttl", "1h",
                 TASKD_API__JWT_SECRET=SECRET)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["role"] == "admin"
    assert abs(claims["exp"] - time.time() - 3600) < 60


@pytest.mark.parametrize(("args", "env", "named"), [
    (["api", "token", "--user", "alice"], {}, "jwt_secret"),
    (["api", "token", "--user", "alice"], {"TASKD_API__JWT_SECRET": "short"}, "32"),
    (["api", "token", "--user", "alice", "--ttl", "soon"], {"TASKD_API__JWT_SECRET": SECRET},
     "duration"),
    (["api"], {"TASKD_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}, "jwt_secret"),
    (["api"], {"TASKD_API__JWT_SECRET": "short",
               "TASKD_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}, "32 are needed"),
    (["api"], {"TASKD_API__JWT_SECRET": SECRET, "TASKD_API__MAX_BODY_BYTES": "1"},
     "api.max_body_bytes"),
])
def test_refusals_are_one_line_and_exit_2(
    args: list[str], env: dict[str, str], named: str
) -> None:
    done = taskd(*args, **env)
    assert done.returncode == 2, done
    assert named in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_api_on_an_unmigrated_database_names_taskd_migrate(empty_database_url: str) -> None:
    done = taskd("api", TASKD_DATABASE_URL=empty_database_url, TASKD_API__JWT_SECRET=SECRET,
                 TASKD_API__ADDR=f"127.0.0.1:{_free_port()}")
    assert done.returncode == 1 and "taskd migrate" in done.stderr, done.stderr


def test_api_serves_until_sigterm_then_exits_0(database_url: str) -> None:
    with api_process(database_url) as (url, proc):
        admin = {"Authorization": f"Bearer {_token('root', admin=True)}"}
        assert httpx.get(f"{url}/openapi.json").json()["info"]["title"] == "taskd API"
        put = httpx.put(f"{url}/v1/accounts/alice", headers=admin,
                        json={"is_member": True, "quota_remaining": 1})
        assert put.status_code == 200, put.text
        created = httpx.post(f"{url}/v1/tasks", json={"kind": "noop", "subtasks": [{}]},
                             headers={"Authorization": f"Bearer {_token('alice')}"})
        assert created.status_code == 201, created.text
        status = httpx.get(f"{url}/v1/status", headers=admin).json()
        assert status["tasks"]["pending"] == 1 and status["subtasks"]["pending"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


@pytest.mark.slow
def test_refund_once_with_two_daemons_the_rescuer_and_the_api_racing(database_url: str) -> None:
    """20 tasks whose subtasks fail for good (or time out pending, or are cancelled through
    the API while two real daemons work): every task ends failed and is refunded once."""
    tasks, per_task = 20, 5
    fast = {"TASKD_HEARTBEAT_INTERVAL": "0.5", "TASKD_RESCUE_INTERVAL": "0.2",
            "TASKD_POLL_INTERVAL": "0.2", "TASKD_QUEUES__STANDARD__INITIAL": "2",
            "TASKD_QUEUES__STANDARD__MAX": "2", "TASKD_QUEUES__STANDARD__MAX_ATTEMPTS": "1",
            "TASKD_QUEUES__STANDARD__PENDING_TIMEOUT": "0.5"}
    kinds = json.dumps({"fail": "standard"})
    with api_process(database_url, TASKD_API__KINDS=kinds, **fast) as (url, _):
        admin = {"Authorization": f"Bearer {_token('root', admin=True)}"}
        alice = {"Authorization": f"Bearer {_token('alice')}"}
        httpx.put(f"{url}/v1/accounts/alice", headers=admin,
                  json={"is_member": True, "quota_remaining": tasks}).raise_for_status()
        ids: list[int] = []
        with daemons(database_url, 2, **fast):
            with httpx.Client(base_url=url, headers=alice, timeout=30) as c:
                for _ in range(tasks):
                    body: dict[str, Any] = {"kind": "fail", "subtasks": [
                        {"permanent": True, "message": f"no {i}"} for i in range(per_task)]}
                    response = c.post("/v1/tasks", json=body)
                    assert response.status_code == 201, response.text
                    ids.append(response.json()["id"])
                for task_id in ids[::2]:  # the API races the daemons and the rescuer
                    assert c.post(f"/v1/tasks/{task_id}/cancel").status_code in (200, 409)
            wait_for(lambda: scalar(database_url, "SELECT count(*) FROM taskd.tasks WHERE"
                                    " status IN ('pending', 'processing')") == 0,
                     timeout=60, message="every task to end")
    statuses = dict(query(database_url, "SELECT status, count(*) FROM taskd.tasks GROUP BY 1"))
    refunds = query(database_url, "SELECT task_id, count(*) FROM taskd.quota_ledger"
                                  " WHERE reason = 'refund' GROUP BY task_id")
    failed = statuses.get("failed", 0)
    assert failed >= tasks // 2, statuses  # the uncancelled half cannot end otherwise
    assert len(refunds) == failed and {n for _, n in refunds} == {1}, refunds
    assert scalar(database_url, "SELECT quota_remaining FROM taskd.accounts"
                                " WHERE user_id = 'alice'") == failed
    assert scalar(database_url, "SELECT sum(delta) FROM taskd.quota_ledger"
                                " WHERE user_id = 'alice'") == failed
