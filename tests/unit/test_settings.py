"""Settings: sources, per-queue defaults, and one clear line for each invalid value."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskd.errors import ConfigError
from taskd.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("TASKD_"):
            monkeypatch.delenv(key)


def test_defaults_follow_the_design() -> None:
    s = load_settings()
    assert (s.heartbeat_interval, s.lease_timeout, s.executor_dead_after) == (5, 60, 30)
    assert (s.poll_interval, s.shutdown_grace, s.scale_check_interval) == (1, 30, 10)
    assert s.metrics_addr == "0.0.0.0:9464" and s.listen is True
    std, lum = s.queues["standard"], s.queues["lumina"]
    assert (std.initial, std.max, std.step, std.scale_up_interval, std.scale_down_interval) == (
        10, 50, 5, 60, 180
    )
    assert (lum.initial, lum.step, lum.scale_up_interval, lum.timeout) == (2, 2, 120, 300)
    assert (lum.polling_interval, lum.max_polls) == (5, 60)
    # The design's 3 retries: attempts = 1 + retries.
    assert std.max_attempts == lum.max_attempts == 4
    assert std.groups is None and s.served_queues.keys() == s.active_queues.keys()


def test_a_daemon_serves_the_queues_whose_groups_name_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKD_QUEUES__RENDER__GROUPS", '["gpu", "big-gpu"]')
    monkeypatch.setenv("TASKD_QUEUES__STANDARD__GROUPS", '["default"]')
    monkeypatch.setenv("TASKD_QUEUES__LUMINA__ENABLED", "false")
    assert sorted(load_settings().served_queues) == ["standard"]
    monkeypatch.setenv("TASKD_EXECUTOR_GROUP", "gpu")
    s = load_settings()
    assert sorted(s.served_queues) == ["render"]
    assert sorted(s.active_queues) == ["render", "standard"]


@pytest.mark.parametrize(("value", "problem"), [
    ("[]", "at least 1 item"), ('[""]', "at least 1 character"), ('"gpu"', "list"),
])
def test_bad_groups_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("TASKD_QUEUES__RENDER__GROUPS", value)
    with pytest.raises(ConfigError, match=problem) as raised:
        load_settings()
    assert "queues.render.groups" in str(raised.value)


def test_environment_nested_override_keeps_queue_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKD_QUEUES__STANDARD__MAX", "80")
    monkeypatch.setenv("TASKD_LEASE_TIMEOUT", "12.5")
    s = load_settings()
    assert s.queues["standard"].max == 80
    assert s.queues["standard"].initial == 10
    assert s.lease_timeout == 12.5


def test_toml_file_then_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "taskd.toml"
    config.write_text(
        'poll_interval = 0.25\nexecutor_group = "gpu"\n'
        "[queues.images]\ninitial = 3\nmax = 6\ncluster_max = 4\n"
        "[queues.standard]\nmax = 70\n"
    )
    monkeypatch.setenv("TASKD_CONFIG", str(config))
    monkeypatch.setenv("TASKD_EXECUTOR_GROUP", "cpu")
    monkeypatch.setenv("TASKD_QUEUES__STANDARD__STEP", "7")
    s = load_settings()
    assert s.poll_interval == 0.25 and s.executor_group == "cpu"
    assert (s.queues["images"].initial, s.queues["images"].cluster_max) == (3, 4)
    assert (s.queues["standard"].max, s.queues["standard"].step) == (70, 7)


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("TASKD_LEASE_TIMEOUT", "-1", "lease_timeout"),
        ("TASKD_LEASE_TIMEOUT", "soon", "lease_timeout"),
        ("TASKD_QUEUES__STANDARD__MAX", "abc", "queues.standard.max"),
        ("TASKD_QUEUES__STANDARD__INITIAL", "99", "queues.standard"),
        ("TASKD_QUEUES__STANDARD__STEP", "0", "queues.standard.step"),
        ("TASKD_QUEUES__STANDARD__CLUSTER_MAX", "0", "queues.standard.cluster_max"),
        ("TASKD_QUEUES__STANDARD__SCALE_UP_INTERVAL", "0", "queues.standard.scale_up_interval"),
        ("TASKD_QUEUES__STANDARD__SCALE_DOWN_INTERVAL", "-5",
         "queues.standard.scale_down_interval"),
        ("TASKD_QUEUES__LUMINA__STEP", "-1", "queues.lumina.step"),
        ("TASKD_QUEUES__LUMINA__INITIAL", "11", "queues.lumina"),
        ("TASKD_QUEUES__STANDARD__BOGUS", "1", "queues.standard.bogus"),
        ("TASKD_LOG_FORMAT", "xml", "log_format"),
        ("TASKD_METRICS_ADDR", "nowhere", "metrics_addr"),
    ],
)
def test_invalid_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, named: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert f"invalid setting {named}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TASKD_HEARTBEAT_INTERVAL": "60"}, ("heartbeat_interval (60)", "lease_timeout (60)")),
        ({"TASKD_HEARTBEAT_INTERVAL": "5", "TASKD_LEASE_TIMEOUT": "4"},
         ("heartbeat_interval (5)", "lease_timeout (4)")),
        ({"TASKD_EXECUTOR_DEAD_AFTER": "5"},
         ("executor_dead_after (5)", "heartbeat_interval (5)")),
    ],
)
def test_timings_that_cannot_work_together_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: tuple[str, str]
) -> None:
    # A lease shorter than a heartbeat expires between two beats; an executor declared dead
    # after one heartbeat interval dies at every hiccup.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith("invalid settings: ") and "\n" not in message
    assert all(part in message for part in named), message
    assert all(name in message for name in env), message


def test_bad_queue_name_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "taskd.toml"
    config.write_text("[queues.Bad]\ninitial = 1\n")
    monkeypatch.setenv("TASKD_CONFIG", str(config))
    with pytest.raises(ConfigError, match="queue name 'Bad'"):
        load_settings()


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKD_CONFIG", "/nonexistent/taskd.toml")
    with pytest.raises(ConfigError, match=r"/nonexistent/taskd\.toml"):
        load_settings()


def test_broken_toml_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "taskd.toml"
    config.write_text("poll_interval = [\n")
    monkeypatch.setenv("TASKD_CONFIG", str(config))
    with pytest.raises(ConfigError):
        load_settings()


def test_initial_above_max_names_the_queue_and_both_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKD_QUEUES__IMAGES__INITIAL", "8")
    monkeypatch.setenv("TASKD_QUEUES__IMAGES__MAX", "4")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "invalid setting queues.images" in str(raised.value)
    assert "initial (8) must be <= max (4)" in str(raised.value)


def test_overriding_one_queue_keeps_the_other_built_in_queues(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKD_QUEUES__LUMINA__BASE_URL", "http://127.0.0.1:8099")
    s = load_settings()
    assert sorted(s.active_queues) == ["lumina", "standard"]
    assert s.queues["standard"].initial == 10


def test_a_queue_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKD_QUEUES__LUMINA__ENABLED", "false")
    monkeypatch.setenv("TASKD_QUEUES__IMAGES__MAX", "40")
    s = load_settings()
    assert sorted(s.active_queues) == ["images", "standard"]


@pytest.mark.parametrize(("given", "shown", "period"), [
    ("10/s", "10/s", 1), (" 600 / m ", "600/m", 60), ("5000/h", "5000/h", 3600),
    ("1000000/s", "1000000/s", 1),
])
def test_a_rate_limit_is_starts_per_second_minute_or_hour(
    monkeypatch: pytest.MonkeyPatch, given: str, shown: str, period: int
) -> None:
    monkeypatch.setenv("TASKD_QUEUES__LUMINA__RATE_LIMIT", given)
    queue = load_settings().queues["lumina"]
    assert queue.rate_limit == shown
    assert queue.rate is not None and queue.rate.period == period
    assert str(queue.rate) == shown
    assert load_settings().queues["standard"].rate is None  # none unless set


@pytest.mark.parametrize(("given", "problem"), [
    ("0/s", "the count must be 1..1000000"), ("-5/s", "the count must be 1..1000000"),
    ("1000001/s", "the count must be 1..1000000"), ("abc", "is not a rate like 10/s"),
    ("10", "is not a rate like 10/s"), ("10/d", "is not a rate like 10/s"),
    ("1.5/s", "is not a rate like 10/s"), ("", "is not a rate like 10/s"),
])
def test_a_bad_rate_limit_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, given: str, problem: str
) -> None:
    monkeypatch.setenv("TASKD_QUEUES__LUMINA__RATE_LIMIT", given)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "invalid setting queues.lumina.rate_limit [TASKD_QUEUES__LUMINA__RATE_LIMIT]" in message
    assert problem in message
