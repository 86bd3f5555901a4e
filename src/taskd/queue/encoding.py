"""How rows are read and outcome batches written, on the claim and completion hot path.

A claimed row becomes a :class:`ClaimedSubtask` through :func:`fields_row`, and a batch of
outcomes becomes one JSON document (:func:`outcomes_json`) that ``record_outcomes`` reads with
``jsonb_to_recordset``: both built for speed (docs/benchmarks.md), both checked by tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from psycopg.rows import BaseRowFactory

from taskd.types import ClaimedSubtask, Outcome

Row = TypeVar("Row")


def fields_row(cls: type[Row]) -> BaseRowFactory[Row]:
    """Rows as ``cls._make(values)``, for a named tuple whose fields are the query's columns in
    order.

    The claim builds one row per subtask: this way costs a fraction of a frozen dataclass, and
    less still than psycopg's ``class_row`` (keyword arguments through a dict;
    docs/benchmarks.md). The columns are checked against the fields once per statement,
    so the query and its row type cannot drift apart silently.
    """
    names: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
    make: Callable[[Sequence[Any]], Row] = cls._make  # type: ignore[attr-defined]

    def factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
        columns = tuple(c.name for c in cursor.description or ())
        if columns and columns != names:
            raise TypeError(f"{cls.__name__} has the fields {names}; the query returned {columns}")
        return make

    return factory


CLAIMED_ROW = fields_row(ClaimedSubtask)
_OUTCOME_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def _outcome_json(o: Outcome) -> str:
    """One element of record_outcomes' JSON array (absent keys are NULL there).

    Formatted, not encoded: a fraction of the encoder's cost (docs/benchmarks.md). The result
    is JSON text already (see :class:`Outcome`); texts go through the encoder.
    """
    if o.verdict == "completed" and o.error is None and o.failure is None:
        # The common case, in one format: a completion and its result (or none).
        if o.result_json is None:
            return f'{{"id":{o.subtask_id:d},"attempt":{o.attempt:d},"verdict":"completed"}}'
        return (f'{{"id":{o.subtask_id:d},"attempt":{o.attempt:d},"verdict":"completed",'
                f'"result":{o.result_json}}}')
    head = f'{{"id":{o.subtask_id:d},"attempt":{o.attempt:d},"verdict":"{o.verdict}"'
    if o.result_json is not None:
        head += ',"result":' + o.result_json
    if o.error is not None:
        head += ',"error":' + _OUTCOME_ENCODER.encode(o.error)
    if o.verdict == "retry" or o.verdict == "snooze":  # NULL would be a NULL run_after
        head += ',"delay":' + _OUTCOME_ENCODER.encode(float(o.delay))
    failure = o.failure
    if failure is not None:
        head += ',"error_type":' + _OUTCOME_ENCODER.encode(failure.error_type)
        head += ',"message":' + _OUTCOME_ENCODER.encode(failure.message)
        head += f',"n":{failure.count:d}'
        for key in ("stack_trace", "queue", "kind"):
            value = getattr(failure, key)
            if value is not None:
                head += f',"{key}":' + _OUTCOME_ENCODER.encode(value)
    return head + "}"


def outcomes_json(outcomes: Sequence[Outcome]) -> str:
    """The batch document of ``record_outcomes``: a JSON array, one object per outcome."""
    return "[" + ",".join([_outcome_json(o) for o in outcomes]) + "]"
