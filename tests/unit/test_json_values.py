"""The JSON shortcuts on the hot path give what the general path gives."""

from __future__ import annotations

import json

import pytest

from taskd.executor.runner import result_json
from taskd.queue.encoding import outcomes_json
from taskd.queue.jsonload import tolerant_loads
from taskd.types import ErrorOccurrence, Outcome, UnreadableJSON


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


def _outcome_document(o: Outcome) -> dict[str, object]:
    """What record_outcomes must read for ``o``: its fields by name, absent when NULL."""
    doc: dict[str, object] = {"id": o.subtask_id, "attempt": o.attempt, "verdict": o.verdict}
    if o.result_json is not None:
        doc["result"] = json.loads(o.result_json)
    if o.error is not None:
        doc["error"] = o.error
    if o.verdict in ("retry", "snooze"):
        doc["delay"] = o.delay
    if o.failure is not None:
        doc.update(error_type=o.failure.error_type, message=o.failure.message,
                   n=o.failure.count)
        for key in ("stack_trace", "queue", "kind"):
            if getattr(o.failure, key) is not None:
                doc[key] = getattr(o.failure, key)
    return doc


FAILURE = ErrorOccurrence("ValueError", 'bad "x"\n\u00e9', "Traceback ...", "standard", "noop")


@pytest.mark.parametrize("outcome", [
    Outcome(1, 1, "completed"),
    Outcome(2, 3, "completed", "{}"),
    Outcome(3, 1, "completed", '{"a":[1,"\\u00e9"]}'),
    Outcome(4, 1, "completed", "null"),
    Outcome(5, 1, "completed", "{}", error="odd: a completion with an error"),
    Outcome(6, 2, "failed", error="ValueError: bad", failure=FAILURE),
    Outcome(7, 1, "retry", error="E: x", delay=2.5, failure=FAILURE),
    Outcome(8, 1, "snooze", error="later", delay=30),
    Outcome(9, 1, "cancelled", error="cancelled on request"),
])
def test_each_outcome_is_written_as_the_fields_it_has(outcome: Outcome) -> None:
    """The completion's shortcut and the general path give the same document."""
    assert json.loads(outcomes_json([outcome])) == [_outcome_document(outcome)]
