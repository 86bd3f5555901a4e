"""Issue 8's targets, checked round by round from a ``peers`` run's rows.

Each target is a ratio of taskd to a peer measured in the same round; the summary gives every
round's ratio, their median and how many rounds met it. One round on a shared machine proves
little (docs/benchmarks.md): the count is the figure to quote.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

Rows = Sequence[dict[str, Any]]


class Target(NamedTuple):
    name: str
    table: Literal["throughput", "latency"]
    field: str  # the figure compared: taskd's over the peer's
    taskd: str  # the system names' prefixes, as the rows give them
    peer: str
    bound: float
    at_least: bool  # True: the ratio must be >= bound; False: <= bound


TARGETS = (
    Target("throughput, 2 daemons ≥ 1.5x PgQueuer", "throughput", "per_s",
           "taskd (2 proc", "PgQueuer", 1.5, True),
    Target("throughput, 2 daemons ≥ 0.6x bare batch loop", "throughput", "per_s",
           "taskd (2 proc", "bare batch loop", 0.6, True),
    Target("latency p50 ≤ PgQueuer's", "latency", "p50_ms", "taskd", "PgQueuer", 1.0, False),
    Target("latency p99 ≤ PgQueuer's", "latency", "p99_ms", "taskd", "PgQueuer", 1.0, False),
    Target("latency p50 ≤ 2x bare LISTEN/NOTIFY", "latency", "p50_ms", "taskd",
           "bare LISTEN/NOTIFY loop", 2.0, False),
)


def _figure(rows: Rows, round_: int, prefix: str, field: str) -> float | None:
    for row in rows:
        if row["round"] == round_ and str(row["system"]).startswith(prefix):
            return float(row[field])
    return None


def summary(throughput: Rows, latency: Rows) -> list[dict[str, Any]]:
    """One row per target: each round's ratio, the median, and rounds met out of rounds
    (a round where either system did not run is left out)."""
    tables = {"throughput": throughput, "latency": latency}
    table = []
    for target in TARGETS:
        rows = tables[target.table]
        ratios = []
        for round_ in sorted({int(row["round"]) for row in rows}):
            mine = _figure(rows, round_, target.taskd, target.field)
            theirs = _figure(rows, round_, target.peer, target.field)
            if mine is not None and theirs:
                ratios.append(mine / theirs)
        met = sum(r >= target.bound if target.at_least else r <= target.bound for r in ratios)
        table.append({
            "target": target.name,
            "rounds": ", ".join(f"{r:.2f}" for r in ratios),
            "median": statistics.median(ratios) if ratios else float("nan"),
            "met": f"{met} of {len(ratios)}",
        })
    return table
