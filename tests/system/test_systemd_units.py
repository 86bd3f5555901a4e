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
