"""The JSON shortcuts on the hot path give what the general path gives."""

from __future__ import annotations

import json

import pytest

from taskd.errors import PermanentError
from taskd.handlers.runner import to_json
from taskd.queue.jsonload import UnreadableJSON, tolerant_loads


@pytest.mark.parametrize("result", [None, True, False, 0, "x", [1, {"a": None}], {"b": [True]}])
def test_to_json_returns_plain_json_equal_to_a_round_trip(result: object) -> None:
    assert to_json(result) == json.loads(json.dumps(result))
    assert type(to_json(result)) is type(json.loads(json.dumps(result)))


def test_to_json_turns_tuples_into_lists_and_refuses_what_json_cannot_hold() -> None:
    assert to_json((1, (2, 3))) == [1, [2, 3]]
    with pytest.raises(PermanentError, match="not JSON-serialisable"):
        to_json({1j})


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
