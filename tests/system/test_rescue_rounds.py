"""The fleet's maintenance round with real daemons: one rescuer pass per interval for three
daemons, and a kill -9 of the daemon holding the round loses no rescue.

Real processes, SIGKILL, the database clock; every wait is a polled condition with a bound.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.system.daemons import (
    DaemonProcess,
    create_executions_table,
    query,
    scalar,
    wait_for,
)
from tests.system.test_daemon import FAST, counts, submit
from tests.system.test_faults import held_by, started

pytestmark = [pytest.mark.slow, pytest.mark.system]

RESCUE = float(FAST["TASKD_RESCUE_INTERVAL"])
LEASE = float(FAST["TASKD_LEASE_TIMEOUT"])


def round_row(url: str) -> tuple[int, str, object, object]:
    [row] = query(url, "SELECT rounds, taken_by, taken_at, next_at"
                       " FROM taskd.maintenance_rounds WHERE name = 'rescue'")
    return row  # type: ignore[return-value]


def test_three_daemons_make_one_rescuer_pass_per_interval(database_url: str) -> None:
    with started(database_url, "a", "b", "c"):
        first = wait_for(lambda: (r := round_row(database_url))[0] > 0 and r,
                         timeout=20, message="a first round")
        last = wait_for(lambda: (r := round_row(database_url))[0] >= first[0] + 6 and r,
                        timeout=6 * RESCUE * 2 + 10, message="six more rounds")
    rounds = last[0] - first[0]
    span = (last[2] - first[2]).total_seconds()  # type: ignore[operator]
    # Each round is taken at least an interval after the one before (database clock); three
    # daemons each passing every interval would make three rounds an interval.
    assert span >= rounds * RESCUE * 0.999, (rounds, span)
    assert span <= rounds * RESCUE * 1.2 + 2.0, (rounds, span)
    takers = {r[0] for r in query(database_url, "SELECT taken_by FROM taskd.maintenance_rounds")}
    assert takers <= {"a", "b", "c"}


def test_kill_9_of_the_daemon_holding_the_round_loses_no_rescue(database_url: str) -> None:
    """The victim runs ten long subtasks and takes the round with a long rescue interval of
    its own; the survivors start after it, so that the round is the victim's when it dies. Its
    leases are rescued when its round ends, and the survivors run them."""
    create_executions_table(database_url)
    round_of_victim = 20.0
    victim = DaemonProcess(database_url, "victim",
                           {**FAST, "TASKD_RESCUE_INTERVAL": str(round_of_victim)})
    try:
        victim.wait_ready()
        submit(database_url, 10, ms=60_000)
        wait_for(lambda: held_by(database_url, "victim") == 10, message="10 leases held")
        wait_for(lambda: round_row(database_url)[1] == "victim", timeout=round_of_victim + 5,
                 message="the victim takes the round")
        with started(database_url, "s1", "s2"):
            _, taker, _, due = round_row(database_url)
            left = scalar(database_url, "SELECT extract(epoch FROM %s - now())::float8", due)
            # Its leases expire before its round ends: only the round holds the rescue back.
            assert taker == "victim" and left > LEASE + 0.5, (taker, left)
            victim.kill()
            wait_for(lambda: held_by(database_url, "victim") == 0,
                     timeout=round_of_victim + LEASE + 10,
                     message="the victim's leases rescued")
            rescued_at = scalar(database_url, "SELECT min(updated_at) FROM taskd.subtasks"
                                              " WHERE crashes = 1")
            wait_for(lambda: held_by(database_url, "s1") + held_by(database_url, "s2") == 10,
                     timeout=20, message="the survivors run the 10 subtasks")
            assert query(database_url, "SELECT DISTINCT attempt, crashes"
                                       " FROM taskd.subtasks") == [(1, 1)]
            assert round_row(database_url)[1] in {"s1", "s2"}
    finally:
        victim.close()
    # Not before the victim's round ended (the survivors kept to it), and within one of their
    # waits (0.5 s plus 20 %) and polling slack after.
    print(f"leases rescued {(rescued_at - due).total_seconds():.2f} s after the dead "
          "daemon's round ended")  # shown with -s
    assert rescued_at >= due
    assert rescued_at - due < timedelta(seconds=RESCUE * 1.2 + 1.5), rescued_at - due
    assert counts(database_url).get("failed", 0) == 0
