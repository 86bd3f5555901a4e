"""`make run`'s console helper (taskd.testing.dev_console): it starts `taskd api` on loopback
once the daemon answers, prints a sign-in link whose token signs in, and stops the API on
SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.console_support import csrf_of
from tests.system.daemons import wait_for

pytestmark = pytest.mark.system
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_helper_prints_a_link_that_signs_in_and_stops_the_api(database_url: str) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env.update(TASKD_DATABASE_URL=database_url, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskd.testing.dev_console", "--port", str(port),
         "--ttl", "120", "--within", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        link = wait_for(lambda: next((m[1] for line in lines
                                      if (m := re.search(r"open (\S+)", line))), None),
                        timeout=90, interval=0.2, message="the sign-in link")
        assert link.startswith(f"http://127.0.0.1:{port}/console/login?token=")
        with httpx.Client(timeout=30) as c:
            form = c.get(link)
            token = re.search(r'<textarea id="token"[^>]*>([^<]+)</textarea>', form.text)
            assert token, form.text
            done = c.post(f"http://127.0.0.1:{port}/console/login",
                          data={"csrf": csrf_of(form.text), "token": token[1]})
            assert done.status_code == 303
            page = c.get(f"http://127.0.0.1:{port}/console/overview")
            assert 'id="who">dev<' in page.text and 'id="role">admin<' in page.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
