"""The systemd units pass `systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing in CI: .ci/run installs systemd")
        pytest.skip("systemd-analyze is not installed")
    # The units name the installed binary; point them at this environment's so verify can
    # check that the executable exists. Every other line is verified as shipped.
    taskd = Path(sys.executable).with_name("taskd")
    text = (UNITS / unit).read_text().replace("/usr/local/bin/taskd", str(taskd))
    (tmp_path / unit).write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"}, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert unit not in done.stderr, done.stderr  # verify names the unit in every finding


def unit_setting(unit: str, key: str) -> str:
    """The value of ``key=`` in the unit (the last one wins, as in systemd)."""
    values = [line.split("=", 1)[1].strip() for line in (UNITS / unit).read_text().splitlines()
              if line.startswith(f"{key}=")]
    assert values, f"{unit} sets no {key}"
    return values[-1]


def seconds(value: str) -> float:
    """A systemd time span such as ``75``, ``75s`` or ``1min 15s``, in seconds."""
    units = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for part in value.split():
        number = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        total += float(number) * units.get(part[len(number):] or "s", 0)
    return total


def test_taskd_unit_waits_for_the_longest_stop_the_daemon_can_take() -> None:
    # The daemon exits at the latest shutdown_grace + final_writes_timeout + STOP_MARGIN after
    # SIGTERM; a shorter TimeoutStopSec would have systemd SIGKILL a daemon that is still
    # giving its work back (docs/daemon.md, "Shutdown").
    from taskd.executor.daemon import STOP_MARGIN
    from taskd.settings import Settings

    fields = Settings.model_fields
    longest = (float(fields["shutdown_grace"].default)
               + float(fields["final_writes_timeout"].default) + STOP_MARGIN)
    assert seconds(unit_setting("taskd.service", "TimeoutStopSec")) >= longest
