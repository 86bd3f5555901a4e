"""The systemd units pass `systemd-analyze verify`, as shipped and with docs/daemon.md's
drop-in for a taskd that is not /usr/local/bin/taskd (a virtualenv, pipx)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
DOCUMENTED_TASKD = "/opt/taskd/bin/taskd"


def _analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing in CI: .ci/run installs systemd")
        pytest.skip("systemd-analyze is not installed")
    return analyze


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_analyze(), "verify", str(unit)], capture_output=True, text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"}, timeout=60, check=False,
    )


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    # The units name the installed binary; point them at this environment's so verify can
    # check that the executable exists. Every other line is verified as shipped.
    taskd = Path(sys.executable).with_name("taskd")
    text = (UNITS / unit).read_text().replace("/usr/local/bin/taskd", str(taskd))
    (tmp_path / unit).write_text(text)
    done = _verify(tmp_path / unit)
    assert done.returncode == 0, done.stderr
    assert unit not in done.stderr, done.stderr  # verify names the unit in every finding


def documented_drop_in() -> str:
    """The drop-in that docs/daemon.md shows for taskd.service."""
    text = (REPO / "docs" / "daemon.md").read_text()
    blocks = re.findall(r"```ini\n(.*?)```", text, re.DOTALL)
    [drop_in] = [b for b in blocks if "ExecStart=" + DOCUMENTED_TASKD + " run" in b]
    return drop_in


def test_the_documented_drop_in_points_the_shipped_unit_at_another_taskd(
    tmp_path: Path,
) -> None:
    if Path("/usr/local/bin/taskd").exists():
        pytest.skip("/usr/local/bin/taskd exists: the shipped unit's own path would pass too")
    shutil.copy(UNITS / "taskd.service", tmp_path / "taskd.service")
    # Unchanged, the unit names a binary that is not there: verify says so.
    missing = _verify(tmp_path / "taskd.service")
    assert missing.returncode != 0 and "/usr/local/bin/taskd" in missing.stderr, missing.stderr
    # The drop-in of the docs, with this environment's taskd for the documented path.
    taskd = Path(sys.executable).with_name("taskd")
    assert taskd.exists()
    override = tmp_path / "taskd.service.d" / "override.conf"
    override.parent.mkdir()
    override.write_text(documented_drop_in().replace(DOCUMENTED_TASKD, str(taskd)))
    done = _verify(tmp_path / "taskd.service")
    assert done.returncode == 0, done.stderr
    assert "taskd.service" not in done.stderr, done.stderr

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
