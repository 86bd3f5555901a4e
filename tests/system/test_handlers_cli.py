"""`taskd handlers` and the standalone fake Lumina API, as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest


def taskd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    return subprocess.run(
        [sys.executable, "-m", "taskd", *args], env={**clean, **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_taskd_handlers_lists_every_kind_with_its_source() -> None:
    done = taskd("handlers", "--json", TASKD_HANDLERS='{"noop": "json:dumps"}')
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    by_kind = {h["kind"]: h for h in report["handlers"]}
    assert by_kind["noop"] == {"kind": "noop", "source": "settings", "origin": "json:dumps",
                               "runs": "thread"}
    assert by_kind["lumina"]["source"] == "builtin"
    assert by_kind["example-echo"]["source"] == "entry point"
    assert report["overridden"] == [
        {"kind": "noop", "source": "builtin", "origin": "taskd.handlers.standard:noop"}
    ]
    table = taskd("handlers")
    assert table.returncode == 0 and "example-shout" in table.stdout


def test_the_runtime_environment_does_not_offer_the_tests_example_handlers() -> None:
    # make test installs them into a folder that only the tests put on their path (the
    # conftest adds it to PYTHONPATH); `taskd handlers` as `make run`'s venv runs it, without.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and "test-site" not in p)
    done = subprocess.run([sys.executable, "-m", "taskd", "handlers", "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    kinds = {h["kind"] for h in json.loads(done.stdout)["handlers"]}
    assert kinds == {"noop", "sleep", "fail", "http", "lumina"}


def test_a_handler_path_that_does_not_import_stops_with_exit_2_and_one_line() -> None:
    done = taskd("handlers", TASKD_HANDLERS='{"resize": "myapp.jobs:resize"}')
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "taskd: error: invalid setting handlers.resize: 'myapp.jobs:resize' does not import: "
        "ModuleNotFoundError: No module named 'myapp'"
    )


@pytest.mark.parametrize(("module", "label"), [("taskd.testing.fake_apis", "fake APIs"),
                                               ("taskd.testing.fake_lumina", "fake lumina")])
def test_the_fake_apis_run_standalone_and_stop_on_sigterm(module: str, label: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", "--job-seconds", "0",
         "--reject-marker", "[unsafe]"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(f"{label} listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1].strip()
        job = httpx.post(url + "/v1/jobs", json={"input": {}, "client_reference": "x"}).json()
        done = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
        assert done["status"] == "done"
        audit = httpx.post(url + "/v1/audit", json={"image_url": done["output"]["image_url"],
                                                    "prompt": "an [unsafe] cat"}).json()
        assert audit["approved"] is False
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
