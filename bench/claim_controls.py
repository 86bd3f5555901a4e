"""What the queue controls cost the claim: the claim statement of another revision (``--before``,
default ``main``) against this one, on one fixed backlog, interleaved in one run.

Each claim runs in a transaction that is rolled back, so every one sees the same backlog; the
variants alternate in a shuffled order each round, so that the machine's load moves them alike.

    python -m bench.claim_controls [--before main] [--rounds 2000] [--backlog 50000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from psycopg import sql

from bench.common import connect, temp_database
from taskd.queue.connection import connection_kwargs
from taskd.queue.queries import load_queries, parse_queries

REPO = Path(__file__).resolve().parents[1]
BASE = {"executor_id": "bench", "lease_timeout": 60.0, "cluster_max": None, "now": None,
        "after_priority": None, "after_run_after": None, "after_id": None, "suspect_after": 2,
        "queue": "standard"}


FULL_WINDOW = """
    UPDATE taskd.queue_controls
       SET (rate_claimed_at, rate_claimed) = (
           SELECT array_agg(now() + make_interval(secs => 3600 + i / 100.0) ORDER BY i),
                  array_agg(1) FROM generate_series(1, 100) i)
     WHERE queue = 'standard'"""


def claim_text(revision: str | None, name: str = "claim_subtasks") -> str:
    if revision is None:
        return load_queries()[name]
    core = subprocess.run(
        ["git", "show", f"{revision}:src/taskd/queue/queries/core.sql"], cwd=REPO,
        capture_output=True, text=True, check=True).stdout
    return parse_queries(core, "core.sql")["claim_subtasks"]


def run(before: str, rounds: int, backlog: int, limit: int) -> list[dict[str, Any]]:
    limited = claim_text(None, "claim_subtasks_rate_limited")
    rate = {"rate_limit": 1_000_000, "rate_period": 1}
    variants: dict[str, tuple[str, dict[str, Any], str | None]] = {
        f"{before} (before)": (claim_text(before), {}, None),
        "this (no pause, no limit)": (claim_text(None), {}, None),
        "this, rate_limit 1000000/s": (limited, rate, None),
        # The sliding window at its longest: 100 claims within the period (set untimed, in
        # the claim's transaction, so rolled back with it).
        "this, rate_limit, 100 claims in the window": (limited, rate, FULL_WINDOW),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with temp_database() as url:
        with connect(url) as conn:
            conn.execute("SELECT taskd.submit_task('standard', 'noop', "
                         "(SELECT jsonb_agg(jsonb_build_object('i', i)) "
                         "FROM generate_series(1, %s) i))", (backlog,))
            conn.execute("INSERT INTO taskd.queue_controls (queue) VALUES ('standard')")
            conn.execute("VACUUM ANALYZE taskd.subtasks")
        kwargs = connection_kwargs(url, "bench", 30.0)
        import psycopg

        with psycopg.connect(url, **kwargs) as conn:
            for _ in range(rounds):
                order = list(variants.items())
                random.shuffle(order)
                for name, (text, extra, setup) in order:
                    params = {**BASE, "limit": limit, **extra}
                    with conn.transaction(force_rollback=True):
                        if setup is not None:
                            conn.execute(setup)  # type: ignore[arg-type]
                        t0 = time.perf_counter()
                        got = conn.execute(sql.SQL(text), params).fetchall()  # type: ignore[arg-type]
                        times[name].append(time.perf_counter() - t0)
                    assert len(got) == limit, (name, len(got))
    out = []
    for name, ts in times.items():
        ts.sort()
        out.append({"variant": name, "claims": len(ts),
                    "median_us": round(statistics.median(ts) * 1e6, 1),
                    "p10_us": round(ts[len(ts) // 10] * 1e6, 1),
                    "p90_us": round(ts[len(ts) * 9 // 10] * 1e6, 1)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--limit", type=int, default=50, help="rows per claim")
    args = parser.parse_args()
    for row in run(args.before, args.rounds, args.backlog, args.limit):
        print(row)


if __name__ == "__main__":
    main()
