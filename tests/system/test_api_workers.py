"""Several `taskd api` processes on one address (api.reuse_port), as
deploy/systemd/taskd-api@.service runs them: each tells systemd it is ready, the kernel spreads
connections among them, and each stops on SIGTERM while the others serve on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from bench.common import free_port

from tests.system.daemons import wait_for

SECRET = "system-test-secret-0123456789abcdef"
WORKERS = 2


@contextmanager
def _notify_socket(path: Path) -> Iterator[socket.socket]:
    """What systemd listens on for one unit's READY=1 (NOTIFY_SOCKET)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        yield sock


@contextmanager
def _worker(database_url: str, port: int, log: Path, notify: Path,
            **env: str) -> Iterator[subprocess.Popen[str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskd", "api"], stdout=out, stderr=subprocess.STDOUT,
            text=True, env={**clean, "TASKD_DATABASE_URL": database_url,
                            "TASKD_API__JWT_SECRET": SECRET,
                            "TASKD_API__ADDR": f"127.0.0.1:{port}",
                            "TASKD_LOG_FORMAT": "json", "NOTIFY_SOCKET": str(notify), **env},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _served(log: Path) -> int:
    """Requests for /healthz this worker answered, from its access log."""
    return sum("GET /healthz" in line for line in log.read_text().splitlines())


def test_two_workers_share_the_address_and_both_serve(database_url: str,
                                                      tmp_path: Path) -> None:
    port = free_port()
    logs = [tmp_path / f"api-{i}.log" for i in range(WORKERS)]
    with ExitStack() as stack:
        procs = []
        for i, log in enumerate(logs):
            notify = stack.enter_context(_notify_socket(tmp_path / f"notify-{i}.sock"))
            procs.append(stack.enter_context(_worker(
                database_url, port, log, tmp_path / f"notify-{i}.sock",
                TASKD_API__REUSE_PORT="true", TASKD_API__ACCESS_LOG="true")))
            # Each is ready (READY=1) before the next starts: both hold the port at once.
            assert notify.recv(4096).decode().startswith("READY=1"), log.read_text()
        assert all(p.poll() is None for p in procs)

        # A new connection a request: the kernel picks a listener for each.
        for _ in range(60):
            with httpx.Client(timeout=10) as client:
                assert client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        wait_for(lambda: sum(_served(log) for log in logs) >= 60, timeout=10,
                 message="the access log lines of 60 requests")
        served = [_served(log) for log in logs]
        assert all(n > 0 for n in served), served

        # One stops (a rolling restart); the other serves every new connection.
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(timeout=30) == 0, logs[0].read_text()
        for _ in range(10):
            with httpx.Client(timeout=10) as client:
                assert client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=30) == 0, logs[1].read_text()


def test_a_worker_cannot_join_a_port_held_without_reuse_port(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
        done = subprocess.run(
            [sys.executable, "-m", "taskd", "api"], capture_output=True, text=True, timeout=60,
            env={**clean, "TASKD_DATABASE_URL": database_url, "TASKD_API__JWT_SECRET": SECRET,
                 "TASKD_API__ADDR": f"127.0.0.1:{port}", "TASKD_API__REUSE_PORT": "true"},
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"api.addr 127.0.0.1:{port}: cannot listen with api.reuse_port" in (
        done.stderr.splitlines()[-1])
