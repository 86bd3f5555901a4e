"""The Tasks page's query string: filters, sort and cursor, read strictly.

Every value is checked here and handed to the queries as a bound parameter; an unknown name or
a malformed value is a :class:`FilterError` whose message names it (the page shows it, escaped,
with status 400). Text filters (queue, kind, user) are compared for equality, so any text is
harmless: a value with SQL or markup in it simply matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from taskd.queue.console import Cursor, Sort, TaskFilter
from taskd.queue.status import TASK_STATUSES

FILTERS = ("status", "queue", "kind", "user", "from", "to")
PAGING = ("sort", "after")
SORTS: tuple[Sort, ...] = ("created", "priority")
MAX_TEXT = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CURSOR = re.compile(r"^(?:(-?\d{1,4}):)?(\d{1,18})$")


class FilterError(ValueError):
    """A query string the console cannot use; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """The Tasks page's state: what to show, in which order, from where."""

    filter: TaskFilter
    sort: Sort = "created"
    after: Cursor | None = None
    # The filters as given (empty ones left out), to fill the form and build links.
    given: tuple[tuple[str, str], ...] = ()

    def link(self, **changes: str | None) -> str:
        """This query's string with ``changes`` (None drops a name)."""
        values = dict(self.given)
        if self.sort != "created":
            values["sort"] = self.sort
        for name, value in changes.items():
            if value is None:
                values.pop(name, None)
            else:
                values[name] = value
        return urlencode(values)

    def value(self, name: str) -> str:
        return dict(self.given).get(name, "")


def _text(name: str, value: str) -> str:
    if len(value) > MAX_TEXT:
        raise FilterError(f"filter {name!r} is longer than {MAX_TEXT} characters")
    if _CONTROL.search(value):
        raise FilterError(f"filter {name!r} contains control characters")
    return value


def _time(name: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(
            f"filter {name!r} is not a time like 2026-01-31T13:45 (UTC unless it names an "
            "offset)") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_filter(pairs: Iterable[tuple[str, str]], *, allowed: Iterable[str] = FILTERS,
                 ) -> tuple[TaskFilter, tuple[tuple[str, str], ...]]:
    """The filter of these query pairs (the names of ``allowed`` only; empty values are
    unset). Raises :class:`FilterError`."""
    known = set(allowed)
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in known:
            raise FilterError(f"unknown filter {name!r}: the filters are "
                              f"{', '.join(n for n in FILTERS if n in known)}")
        if name in values:
            raise FilterError(f"filter {name!r} is given twice")
        if value.strip():
            values[name] = _text(name, value.strip())
    status = values.get("status")
    if status is not None and status not in TASK_STATUSES:
        raise FilterError(f"status {status!r} is not one of {', '.join(TASK_STATUSES)}")
    created_from = _time("from", values["from"]) if "from" in values else None
    created_to = _time("to", values["to"]) if "to" in values else None
    if created_from and created_to and created_from >= created_to:
        raise FilterError("the time range is empty: 'from' must be before 'to'")
    flt = TaskFilter(status=status, queue=values.get("queue"), kind=values.get("kind"),
                     user_id=values.get("user"), created_from=created_from,
                     created_to=created_to)
    return flt, tuple((n, values[n]) for n in FILTERS if n in values)


def parse_task_query(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> TaskQuery:
    """The Tasks page's query string. Raises :class:`FilterError`."""
    pairs = list(params.items() if isinstance(params, Mapping) else params)
    filters = [(n, v) for n, v in pairs if n not in PAGING]
    paging: dict[str, str] = {}
    for name, value in pairs:
        if name in PAGING:
            if name in paging:
                raise FilterError(f"{name!r} is given twice")
            paging[name] = value.strip()
    unknown = [n for n, _ in filters if n not in FILTERS]
    if unknown:
        raise FilterError(f"unknown filter {unknown[0]!r}: the filters are "
                          f"{', '.join(FILTERS)}, and {', '.join(PAGING)} for the order "
                          "and the page")
    flt, given = parse_filter(filters)
    sort = paging.get("sort") or "created"
    if sort not in SORTS:
        raise FilterError(f"sort {sort!r} is not one of {', '.join(SORTS)}")
    after = None
    if paging.get("after"):
        match = _CURSOR.match(paging["after"])
        if not match or (sort == "priority") != (match[1] is not None):
            raise FilterError(f"cursor {paging['after']!r} is not a page of this list")
        after = Cursor(id=int(match[2]),
                       priority=int(match[1]) if match[1] is not None else None)
    return TaskQuery(filter=flt, sort=sort, after=after, given=given)
