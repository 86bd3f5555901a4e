"""claim_subtasks_rate_limited is claim_subtasks plus the rate limit's window, word for word
but for started_at (the claim's time read after the lock): two texts (the rate limit's CTEs
cost every claim their planning), one statement to keep."""

from __future__ import annotations

import difflib

from taskd.queue.queries import load_queries


def statement(name: str) -> list[str]:
    """The query's lines without its leading comment."""
    lines = load_queries()[name].splitlines()
    while lines[0].startswith("--"):
        lines.pop(0)
    return lines


def test_the_rate_limited_claim_only_adds_to_the_claim() -> None:
    base, limited = statement("claim_subtasks"), statement("claim_subtasks_rate_limited")
    changed = []
    for op, b1, b2, l1, l2 in difflib.SequenceMatcher(a=base, b=limited,
                                                      autojunk=False).get_opcodes():
        if op in ("equal", "insert"):
            continue
        changed.append((base[b1:b2], limited[l1:l2]))
    # Three lines differ: the window's CTEs come first, least() takes the window's room as
    # one more argument, and started_at is the time the window counts the claim at.
    assert [[line.strip() for line in was] for was, _ in changed] == [
        ["WITH picked AS ("], ["AND queue = %(queue)s)) END)"],
        ["started_at = coalesce(%(now)s, now()),"]]
    assert changed[0][1][0] == "WITH bucket AS ("
    assert "), picked AS (" in changed[0][1]
    assert changed[1][1][0].strip() == "AND queue = %(queue)s)) END,"
    assert [line.strip() for line in changed[2][1]] == [
        "started_at = (SELECT claim_time FROM rate_window),"]
    added = "\n".join(line for line in limited if line not in base)
    for part in ("rate_window AS", "bucket AS", "FOR UPDATE OF c", "counted AS",
                 "clock_timestamp()", "coalesce((SELECT free FROM rate_window), 0)"):
        assert part in added


def _lines_between(lines: list[str], start: str, end: str) -> list[str]:
    """The lines from the one that starts with ``start`` up to the one with ``end``, stripped,
    comments left out."""
    stripped = [line.strip() for line in lines]
    first = next(i for i, line in enumerate(stripped) if line.startswith(start))
    last = next(i for i in range(first, len(stripped)) if stripped[i].startswith(end))
    return [line for line in stripped[first:last + 1] if not line.startswith("--")]


def test_the_claim_of_several_queues_takes_rows_as_the_claim_does() -> None:
    """The same lease, the same columns back, the same filters per queue."""
    base, many = statement("claim_subtasks"), statement("claim_subtasks_of_queues")
    assert (_lines_between(base, "UPDATE taskd.subtasks s", "SET status")
            == _lines_between(many, "UPDATE taskd.subtasks s", "SET status"))
    assert (_lines_between(base, "locked_by = %(executor_id)s", "RETURNING")
            == _lines_between(many, "locked_by = %(executor_id)s", "RETURNING"))
    returned = _lines_between(base, "RETURNING", "s.max_attempts")
    assert returned == _lines_between(many, "RETURNING", "s.max_attempts")
    text = "\n".join(many)
    for condition in ("status = 'pending'", "run_after <= coalesce(%(now)s, now())",
                      "crashes < %(suspect_after)s", "FOR UPDATE SKIP LOCKED", "c.paused"):
        assert condition in text
