"""The ``peers`` summary of issue 8's targets: ratios within each round, rounds met."""

from __future__ import annotations

from typing import Any

from bench import targets


def throughput(round_: int, taskd: float, pgqueuer: float, bare: float) -> list[dict[str, Any]]:
    return [
        {"round": round_, "system": "taskd (1 proc, concurrency 2000)", "per_s": 1.0},
        {"round": round_, "system": "taskd (2 proc, concurrency 2000)", "per_s": taskd},
        {"round": round_, "system": "PgQueuer (2 proc, batch 100)", "per_s": pgqueuer},
        {"round": round_, "system": "bare batch loop (4 conns, batch 100)", "per_s": bare},
    ]


def latency(round_: int, taskd: tuple[float, float], pgqueuer: tuple[float, float],
            listen: float) -> list[dict[str, Any]]:
    return [
        {"round": round_, "system": "taskd", "p50_ms": taskd[0], "p99_ms": taskd[1]},
        {"round": round_, "system": "PgQueuer", "p50_ms": pgqueuer[0], "p99_ms": pgqueuer[1]},
        {"round": round_, "system": "bare LISTEN/NOTIFY loop", "p50_ms": listen,
         "p99_ms": 9.0},
    ]


def by_target(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {row["target"]: (row["rounds"], row["met"]) for row in rows}


def test_each_target_is_a_ratio_within_its_round_and_bounds_count_as_met() -> None:
    tp = [*throughput(1, 60.0, 10.0, 100.0), *throughput(2, 15.0, 10.0, 25.0)]
    lat = [*latency(1, (1.0, 2.0), (1.0, 20.0), 0.5), *latency(2, (1.2, 2.0), (1.0, 1.0), 0.5)]
    got = by_target(targets.summary(tp, lat))
    assert got == {
        "throughput, 2 daemons ≥ 1.5x PgQueuer": ("6.00, 1.50", "2 of 2"),
        "throughput, 2 daemons ≥ 0.6x bare batch loop": ("0.60, 0.60", "2 of 2"),
        "latency p50 ≤ PgQueuer's": ("1.00, 1.20", "1 of 2"),
        "latency p99 ≤ PgQueuer's": ("0.10, 2.00", "1 of 2"),
        "latency p50 ≤ 2x bare LISTEN/NOTIFY": ("2.00, 2.40", "1 of 2"),
    }


def test_a_round_missing_a_system_is_left_out_and_the_median_is_of_the_rest() -> None:
    tp = [*throughput(1, 60.0, 10.0, 100.0), *throughput(2, 70.0, 10.0, 100.0),
          *throughput(3, 80.0, 10.0, 100.0)]
    tp = [row for row in tp if not (row["round"] == 2 and row["system"].startswith("bare"))]
    rows = {row["target"]: row for row in targets.summary(tp, [])}
    bare = rows["throughput, 2 daemons ≥ 0.6x bare batch loop"]
    assert (bare["rounds"], bare["met"], bare["median"]) == ("0.60, 0.80", "2 of 2", 0.7)
    assert rows["throughput, 2 daemons ≥ 1.5x PgQueuer"]["median"] == 7.0
    assert rows["latency p50 ≤ PgQueuer's"]["met"] == "0 of 0"
