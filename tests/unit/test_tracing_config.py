"""When the executor traces: off by default and then free; on by setting or OTEL_* variables."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

from taskd.errors import ConfigError
from taskd.executor.tracing import Tracing, load_tracing, wanted
from taskd.settings import Settings

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


@pytest.mark.parametrize(
    ("tracing", "environ", "on"),
    [
        (None, {}, False),
        (None, {"OTEL_SERVICE_NAME": "x"}, False),  # naming a service asks for no exporter
        (None, {"OTEL_TRACES_EXPORTER": "console"}, True),
        (None, {"OTEL_TRACES_EXPORTER": "none", **ENDPOINT}, False),
        (None, ENDPOINT, True),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        (False, {"OTEL_TRACES_EXPORTER": "console"}, False),
        (True, {}, True),
    ],
)
def test_tracing_is_wanted_when_set_or_configured(
    tracing: bool | None, environ: dict[str, str], on: bool,
) -> None:
    assert wanted(Settings(tracing=tracing), environ) is on


def test_off_by_default_opentelemetry_is_never_imported() -> None:
    code = ("import sys, taskd.cli, taskd.executor.daemon; "
            "from taskd.executor.tracing import load_tracing; "
            "from taskd.settings import Settings; "
            "assert load_tracing(Settings()) is None; "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKD_", "OTEL_"))}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_the_console_exporter_builds_a_provider_of_taskd_s_own() -> None:
    tracing = load_tracing(Settings(), {"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(tracing, Tracing)
    try:
        resource = tracing.provider.resource  # type: ignore[attr-defined]
        assert resource.attributes["service.name"] == "taskd"
    finally:
        tracing.shutdown()


def test_an_unknown_exporter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER=zipkin"):
        load_tracing(Settings(), {"OTEL_TRACES_EXPORTER": "zipkin"})


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def test_otlp_needs_its_exporter_package() -> None:
    if not _installed("opentelemetry.exporter.otlp.proto.http"):
        with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp-proto-http"):
            load_tracing(Settings(), ENDPOINT)
    else:
        tracing = load_tracing(Settings(), ENDPOINT)
        assert isinstance(tracing, Tracing)
        tracing.shutdown()
