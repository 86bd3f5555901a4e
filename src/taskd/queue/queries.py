"""Named SQL queries, loaded once from the ``.sql`` files beside this module.

Each query starts with a ``-- name: <name>`` line; the text up to the next header is the query.
Every value is a bound parameter (``%(name)s``); nothing is built by string formatting.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from psycopg import sql

_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str, source: str) -> dict[str, str]:
    """Split one file's text into ``{name: query}``."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"{source}: query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@cache
def load_queries() -> dict[str, str]:
    """Every query of the package's ``queries/*.sql`` files, by name."""
    found: dict[str, str] = {}
    folder = resources.files("taskd.queue").joinpath("queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, query in parse_queries(entry.read_text("utf-8"), entry.name).items():
            if name in found:
                raise ValueError(f"{entry.name}: query {name!r} is already defined elsewhere")
            found[name] = query
    return found


def query(name: str) -> sql.SQL:
    """The named query, ready to execute."""
    return sql.SQL(load_queries()[name])  # type: ignore[arg-type, unused-ignore]
