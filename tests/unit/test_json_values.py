"""The JSON shortcuts on the hot path give what the general path gives."""

from __future__ import annotations

import json

import pytest

from taskd.executor.runner import result_json
from taskd.queue.jsonload import tolerant_loads
from taskd.types import UnreadableJSON


@pytest.mark.parametrize("result", [
    True, False, 0, 1.5, "x", "\u00e9\u2603", [1, {"a": None}], {"b": [True]}, {}, [], {"": {}},
])
def test_result_json_is_the_text_of_the_result(result: object) -> None:
    text = result_json(result)
    assert text is not None
    assert json.loads(text) == result
    assert type(json.loads(text)) is type(result)


def test_no_result_is_no_text() -> None:
    assert result_json(None) is None


@pytest.mark.parametrize("data", [b"{}", "{}"])
def test_an_empty_object_is_a_new_dict_each_time(data: bytes | str) -> None:
    first, second = tolerant_loads(data), tolerant_loads(data)
    assert first == second == {}
    first["x"] = 1
    assert second == {}  # no shared default


def test_other_documents_are_decoded_and_too_deep_ones_marked() -> None:
    assert tolerant_loads(b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert tolerant_loads(b"null") is None
    deep = tolerant_loads(b"[" * 100_000 + b"]" * 100_000)
    assert isinstance(deep, UnreadableJSON)
