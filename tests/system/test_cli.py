"""The taskd command as a user runs it: exit codes and one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def taskd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    return subprocess.run(
        [sys.executable, "-m", "taskd", *args], env={**clean, **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TASKD_QUEUES__STANDARD__MAX": "abc"}, "queues.standard.max"),
        ({"TASKD_HEARTBEAT_INTERVAL": "0"}, "heartbeat_interval"),
        ({"TASKD_CONFIG": "/nonexistent.toml"}, "TASKD_CONFIG"),
    ],
)
def test_invalid_settings_stop_every_command_with_exit_2(
    env: dict[str, str], named: str
) -> None:
    for command in ("migrate", "status"):
        done = taskd(command, **env)
        assert done.returncode == 2, done
        assert named in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_commands_on_an_unmigrated_database_name_taskd_migrate(
    empty_database_url: str,
) -> None:
    done = taskd("status", TASKD_DATABASE_URL=empty_database_url)
    assert done.returncode == 1
    assert "taskd migrate" in done.stderr and "Traceback" not in done.stderr
    assert taskd("migrate", TASKD_DATABASE_URL=empty_database_url).returncode == 0
    done = taskd("status", "--json", TASKD_DATABASE_URL=empty_database_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["executors"] == []


def test_unreachable_database_is_one_line_exit_2() -> None:
    done = taskd("status", TASKD_DATABASE_URL="postgresql://postgres@127.0.0.1:1/x")
    assert done.returncode == 2
    assert "database unavailable" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_without_a_database_url_the_embedded_database_is_started_and_migrated(
    tmp_path: Path,
) -> None:
    data = str(tmp_path / "pgdata")
    done = taskd("submit", "--count", "3", TASKD_EMBEDDED_DIR=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    status = taskd("status", "--json", TASKD_EMBEDDED_DIR=data)
    assert status.returncode == 1, status.stderr  # work is pending and no executor is live
    queues = {q["queue"]: q for q in json.loads(status.stdout)["queues"]}
    assert queues["standard"]["ready"] == 3
