"""deploy/taskd.toml.example loads, and documents every setting."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from taskd.settings import (
    ApiSettings,
    NotificationSettings,
    QueueSettings,
    Settings,
    load_settings,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "taskd.toml.example"


def test_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TASKD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TASKD_CONFIG", str(EXAMPLE))
    settings = load_settings()
    assert settings.queues["standard"].max == 50
    assert settings.log_format == "json"


@pytest.mark.parametrize("model", [Settings, QueueSettings, ApiSettings, NotificationSettings])
def test_example_names_every_setting(
    model: type[Settings | QueueSettings | ApiSettings | NotificationSettings],
) -> None:
    text = EXAMPLE.read_text()
    named = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    tables = set(re.findall(r"^\[(?:queues\.)?([a-z_]+)", text, flags=re.MULTILINE))
    missing = set(model.model_fields) - named - tables - {"standard", "lumina", "queues"}
    assert not missing, f"deploy/taskd.toml.example does not document {sorted(missing)}"
