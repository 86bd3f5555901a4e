"""The scaler's decision: every branch, both intervals and both bounds, time injected."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskd.scaler import Decision, decide
from taskd.settings import QueueSettings

# DESIGN.md's standard queue: initial 10, max 50, step 5, up every 60 s, down every 180 s.
STANDARD = QueueSettings(initial=10, max=50, step=5, scale_up_interval=60.0,
                         scale_down_interval=180.0)
NOW = 10_000.0

CASES: list[tuple[str, dict[str, Any], tuple[int, str | None], str]] = [
    # name, decide() arguments over the defaults below, (limit, direction), reason contains
    ("up when backlog > 2 * limit, never scaled",
     {"backlog": 21, "limit": 10}, (15, "up"), "21 > 2 * 10"),
    ("no change at exactly 2 * limit",
     {"backlog": 20, "limit": 10}, (10, None), "within"),
    ("up waits for scale_up_interval",
     {"backlog": 500, "limit": 10, "last_scale_up": NOW - 59.9}, (10, None), "59.9s ago"),
    ("up once scale_up_interval has passed exactly",
     {"backlog": 500, "limit": 10, "last_scale_up": NOW - 60.0}, (15, "up"), "10 -> 15"),
    ("up long after the last scale-up",
     {"backlog": 500, "limit": 15, "last_scale_up": NOW - 3600}, (20, "up"), "15 -> 20"),
    ("a recent scale-down does not hold back a scale-up",
     {"backlog": 500, "limit": 20, "last_scale_down": NOW - 1}, (25, "up"), "20 -> 25"),
    ("up stops at max",
     {"backlog": 500, "limit": 48}, (50, "up"), "48 -> 50"),
    ("at max stays at max",
     {"backlog": 10_000, "limit": 50}, (50, None), "already at max 50"),
    ("down when backlog < limit / 2, never scaled down",
     {"backlog": 9, "limit": 20}, (15, "down"), "9 < 20 / 2"),
    ("no change at exactly limit / 2",
     {"backlog": 10, "limit": 20}, (20, None), "within"),
    ("odd limit: 10 < 21 / 2 scales down",
     {"backlog": 10, "limit": 21}, (16, "down"), "21 -> 16"),
    ("down waits for scale_down_interval",
     {"backlog": 0, "limit": 30, "last_scale_down": NOW - 179.9}, (30, None), "179.9s ago"),
    ("down once scale_down_interval has passed exactly",
     {"backlog": 0, "limit": 30, "last_scale_down": NOW - 180.0}, (25, "down"), "30 -> 25"),
    ("a recent scale-up does not hold back a scale-down",
     {"backlog": 0, "limit": 30, "last_scale_up": NOW - 1}, (25, "down"), "30 -> 25"),
    ("down stops at initial",
     {"backlog": 0, "limit": 12}, (10, "down"), "12 -> 10"),
    ("at initial stays at initial",
     {"backlog": 0, "limit": 10}, (10, None), "already at initial 10"),
    ("in range: nothing to do",
     {"backlog": 30, "limit": 25}, (25, None), "within"),
    ("a limit above max comes down at once, whatever the interval",
     {"backlog": 10_000, "limit": 80, "last_scale_down": NOW}, (50, "down"), "above max 50"),
    ("a limit below initial goes up at once, whatever the interval",
     {"backlog": 0, "limit": 3, "last_scale_up": NOW}, (10, "up"), "below initial 10"),
]


@pytest.mark.parametrize(("arguments", "expected", "reason"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decision_table(
    arguments: dict[str, Any], expected: tuple[int, str | None], reason: str
) -> None:
    call: dict[str, Any] = {"last_scale_up": None, "last_scale_down": None, "now": NOW,
                            "settings": STANDARD, **arguments}
    decision = decide(**call)
    assert (decision.limit, decision.direction) == expected
    assert reason in decision.reason


def test_lumina_defaults_step_by_two() -> None:
    lumina = QueueSettings(initial=2, max=10, step=2, scale_up_interval=120.0)
    assert decide(5, 2, None, None, 0.0, lumina) == Decision(4, "up", "backlog 5 > 2 * 2: 2 -> 4")
    assert decide(5, 4, 0.0, None, 119.0, lumina).direction is None
    assert decide(9, 4, 0.0, None, 120.0, lumina).limit == 6


def test_a_step_wider_than_the_range_lands_on_the_bounds() -> None:
    wide = QueueSettings(initial=2, max=6, step=100)
    assert decide(100, 2, None, None, NOW, wide).limit == 6
    assert decide(0, 6, None, None, NOW, wide).limit == 2


def test_initial_equal_to_max_never_moves() -> None:
    fixed = QueueSettings(initial=4, max=4, step=1)
    assert decide(10_000, 4, None, None, NOW, fixed).direction is None
    assert decide(0, 4, None, None, NOW, fixed).direction is None


def test_clock_may_start_anywhere() -> None:
    # time.monotonic() can be small or negative-relative; only differences matter.
    assert decide(500, 10, -30.0, None, 30.0, STANDARD).direction == "up"
    assert decide(500, 10, -29.0, None, 30.0, STANDARD).direction is None


@pytest.mark.parametrize(("backlog", "limit", "named"), [(-1, 10, "backlog"), (0, 0, "limit")])
def test_impossible_inputs_are_named(backlog: int, limit: int, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        decide(backlog, limit, None, None, NOW, STANDARD)


@st.composite
def situations(draw: st.DrawFn) -> tuple[QueueSettings, int, int, float | None, float | None]:
    initial = draw(st.integers(1, 60))
    settings = QueueSettings(
        initial=initial, max=draw(st.integers(initial, 120)), step=draw(st.integers(1, 30)),
        scale_up_interval=draw(st.floats(0.01, 500)),
        scale_down_interval=draw(st.floats(0.01, 500)),
    )
    since = st.none() | st.floats(0, 1000)
    return (settings, draw(st.integers(0, 10_000)), draw(st.integers(1, 200)),
            draw(since), draw(since))


@given(situations())
def test_invariants_hold_for_any_situation(
    situation: tuple[QueueSettings, int, int, float | None, float | None],
) -> None:
    settings, backlog, limit, up_ago, down_ago = situation
    now = 5000.0
    last_up = None if up_ago is None else now - up_ago
    last_down = None if down_ago is None else now - down_ago
    decision = decide(backlog, limit, last_up, last_down, now, settings)
    # Never outside the bounds, and the direction says which way the limit moved.
    assert settings.initial <= decision.limit <= settings.max
    if decision.direction is None:
        assert decision.limit == limit
    elif decision.direction == "up":
        assert decision.limit > limit
    else:
        assert decision.limit < limit
    in_bounds = settings.initial <= limit <= settings.max
    if in_bounds:
        # From inside the bounds, one decision moves by at most one step, only when the
        # backlog asks for it and the interval of that direction has passed.
        assert abs(decision.limit - limit) <= settings.step
        if decision.direction == "up":
            assert backlog > 2 * limit
            assert last_up is None or now - last_up >= settings.scale_up_interval
        if decision.direction == "down":
            assert 2 * backlog < limit
            assert last_down is None or now - last_down >= settings.scale_down_interval
