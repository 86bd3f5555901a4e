"""deploy/examples/photo-platform.toml loads, registers its handlers, and makes model_pose12
tasks of 12 pose subtasks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskd.api.models import CreateTaskRequest
from taskd.handlers import HandlerRegistry
from taskd.handlers.photo import basic_clean, model_pose12
from taskd.settings import Settings, load_settings

PROFILE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "photo-platform.toml"


@pytest.fixture
def profile(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("TASKD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TASKD_CONFIG", str(PROFILE))
    return load_settings()


def test_the_profile_registers_its_handlers_and_queues(profile: Settings) -> None:
    registry = HandlerRegistry.load(profile, discovered=[])
    for kind, fn in (("basic_clean", basic_clean), ("model_pose12", model_pose12)):
        handler = registry.get(kind)
        assert handler is not None and handler.fn is fn and handler.source == "settings"
    assert registry.get("basic_clean").is_async is False  # type: ignore[union-attr]
    assert profile.api.kinds == {"basic_clean": "standard", "model_pose12": "images"}
    images = profile.queues["images"]
    assert images.base_url == "http://127.0.0.1:8099"
    assert images.audit_url == "http://127.0.0.1:8099/v1/audit"
    assert images.initial == 12  # one task's poses side by side
    assert set(profile.served_queues) == {"standard", "images"}


def test_a_model_pose12_request_makes_12_pose_subtasks_in_template_order(
    profile: Settings,
) -> None:
    request = CreateTaskRequest(kind="model_pose12",
                                variables={"model": ["Ana in a red linen dress"]})
    payloads, batch = request.plan(profile.api.templates["model_pose12"])
    assert batch == 1 and len(payloads) == 12
    prompts = [p["prompt"] for p in payloads]
    assert all(p.startswith("Ana in a red linen dress, ") for p in prompts)
    assert len(set(prompts)) == 12
    assert prompts[0].startswith("Ana in a red linen dress, full body, standing, facing")
