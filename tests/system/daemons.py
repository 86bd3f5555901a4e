"""Start real ``taskd run`` processes for system tests, and wait on conditions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
RECORD_HANDLERS = json.dumps({"record": "tests.handlers_for_tests:record"})


def wait_for(
    condition: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def scalar(url: str, sql: str, *params: Any) -> Any:
    return query(url, sql, *params)[0][0]


class DaemonProcess:
    """One ``python -m taskd run`` child with its log in a file."""

    def __init__(self, url: str, executor_id: str, env: dict[str, str]) -> None:
        self.url = url
        self.executor_id = executor_id
        self.log_path = Path(tempfile.mkstemp(prefix=f"taskd-{executor_id}-", suffix=".log")[1])
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
        full_env = {
            **clean,
            "TASKD_DATABASE_URL": url,
            "TASKD_EXECUTOR_ID": executor_id,
            "TASKD_METRICS_ADDR": "127.0.0.1:0",
            "TASKD_HANDLERS": RECORD_HANDLERS,
            "TASKD_LOG_FORMAT": "json",
            # The repository (tests.handlers_for_tests), then what the tests run with (the
            # example handlers' folder, see tests/conftest.py).
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                          if p),
            **env,
        }
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskd", "run"], cwd=REPO, env=full_env,
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon {self.executor_id} exited:\n{self.log()}")
            return any(e.get("message") == "ready" for e in self.events())

        wait_for(ready, timeout=timeout, message=f"daemon {self.executor_id} ready")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@contextmanager
def daemons(url: str, count: int = 1, **env: str) -> Iterator[list[DaemonProcess]]:
    """Start ``count`` daemons on ``url``, wait until each is ready; kill leftovers after."""
    started = [DaemonProcess(url, f"d{i}-{os.getpid()}", env) for i in range(count)]
    try:
        for d in started:
            d.wait_ready()
        yield started
    finally:
        for d in started:
            d.close()


def create_executions_table(url: str) -> None:
    from tests.handlers_for_tests import EXECUTIONS_TABLE

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(EXECUTIONS_TABLE)  # type: ignore[arg-type]
