"""HandlerRegistry: built-ins, entry points, settings, their precedence, and bad paths."""

from __future__ import annotations

import importlib.metadata
import json
from importlib.metadata import EntryPoint

import pytest

from taskd.errors import ConfigError, PermanentError
from taskd.executor.runner import backoff_delay, error_text, result_json
from taskd.handlers import ENTRY_POINT_GROUP, HandlerRegistry
from taskd.handlers.registry import import_path
from taskd.settings import Settings


def point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def load(handlers: dict[str, str] | None = None, points: list[EntryPoint] | None = None
         ) -> HandlerRegistry:
    return HandlerRegistry.load(Settings(handlers=handlers or {}), discovered=points or [])


def test_builtins_are_registered_as_async_with_their_origin() -> None:
    registry = load()
    assert registry.kinds() == ["fail", "http", "lumina", "noop", "sleep"]
    noop = registry.get("noop")
    assert noop is not None
    assert (noop.source, noop.origin, noop.is_async) == (
        "builtin", "taskd.handlers.standard:noop", True
    )
    assert registry.get("resize") is None


def test_settings_add_handlers_and_override_builtins() -> None:
    registry = load({"noop": "json:dumps", "resize": "os.path:join"})
    noop = registry.get("noop")
    assert noop is not None and (noop.source, noop.origin) == ("settings", "json:dumps")
    assert noop.is_async is False
    assert [(h.kind, h.source) for h in registry.overridden] == [("noop", "builtin")]
    resize = registry.get("resize")
    assert resize is not None and resize.fn is importlib.import_module("os.path").join


def test_entry_points_override_builtins_and_settings_override_entry_points() -> None:
    registry = load(points=[point("sleep", "json:loads"), point("extra", "json:dumps")])
    sleep = registry.get("sleep")
    assert sleep is not None and sleep.source == "entry point"
    assert sleep.origin == "json:loads [unknown distribution]"
    registry = load({"extra": "os:getcwd"}, [point("extra", "json:dumps")])
    extra = registry.get("extra")
    assert extra is not None and (extra.source, extra.origin) == ("settings", "os:getcwd")
    assert [(h.kind, h.source) for h in registry.overridden] == [("extra", "entry point")]


def test_two_entry_points_for_one_kind_are_an_error_unless_settings_choose() -> None:
    points = [point("dup", "json:dumps"), point("dup", "json:loads")]
    with pytest.raises(ConfigError, match=r"kind 'dup' is offered by several entry points.*"
                       r"handlers\.dup"):
        load(points=points)
    chosen = load({"dup": "json:loads"}, points).get("dup")
    assert chosen is not None and chosen.source == "settings"


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("no_such_module_x:f", "ModuleNotFoundError: No module named 'no_such_module_x'"),
        ("json:no_such_function", "AttributeError: module 'json' has no attribute"),
        ("json.dumps", "ValueError: expected 'module:function'"),
    ],
)
def test_a_settings_path_that_does_not_import_names_the_kind_and_the_path(
    path: str, why: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load({"resize": path})
    message = str(caught.value)
    assert message.startswith(f"invalid setting handlers.resize: {path!r} does not import: ")
    assert why in message


def test_a_broken_entry_point_names_the_kind_and_the_entry_point() -> None:
    with pytest.raises(ConfigError, match=r"handler 'thing': entry point no_such_mod_y:f "
                       r"\[unknown distribution\] does not import: ModuleNotFoundError"):
        load(points=[point("thing", "no_such_mod_y:f")])


def test_non_callables_and_bad_kind_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="handler 'pi': math:pi is a float, not a function"):
        load({"pi": "math:pi"})
    with pytest.raises(ConfigError, match="kind 'bad kind!' from json:dumps is not a valid kind"):
        load({"bad kind!": "json:dumps"})


def test_import_path_follows_dotted_attributes() -> None:
    assert import_path("os:path.join") is importlib.import_module("os.path").join


def test_the_installed_example_distribution_is_found_by_its_entry_points() -> None:
    try:
        dist = importlib.metadata.distribution("taskd-example-handlers")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("taskd-example-handlers is not installed for the tests: run `make test`, "
                    "or pip install --target .venv/test-site tests/fixtures/example-handlers")
    registry = HandlerRegistry.load(Settings(handlers={}))
    echo, shout = registry.get("example-echo"), registry.get("example-shout")
    assert echo is not None and shout is not None
    assert echo.source == "entry point" and echo.is_async
    assert echo.origin == f"taskd_example_handlers:echo [taskd-example-handlers {dist.version}]"
    assert shout.is_async is False


def test_backoff_doubles_from_retry_base_up_to_retry_max_plus_at_most_ten_percent() -> None:
    for attempt, expected in [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0),
                              (1000, 300.0)]:
        for _ in range(20):
            delay = backoff_delay(attempt, 1.0, 300.0)
            assert expected <= delay <= expected * 1.1


def test_error_text_and_json_results() -> None:
    assert error_text(ValueError("bad")) == "ValueError: bad"
    assert error_text(KeyError()) == "KeyError"
    assert json.loads(result_json({"a": (1, 2)}) or "") == {"a": [1, 2]}
    with pytest.raises(PermanentError, match="not JSON-serialisable"):
        result_json(float("nan"))
    with pytest.raises(PermanentError, match="NUL character"):
        result_json({"s": "a\x00b"})
    with pytest.raises(PermanentError, match="lone surrogate"):
        result_json({"s": "half a pair \ud800"})
    # Whole pairs and other non-ASCII text are fine.
    assert json.loads(result_json({"s": "caf\u00e9 \U0001f600"}) or "") == {
        "s": "caf\u00e9 \U0001f600"}
    assert error_text(ValueError("a\x00b \udc80")) == "ValueError: a\ufffdb ?"
