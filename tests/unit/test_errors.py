"""The exceptions handlers raise to steer an outcome refuse values the database cannot hold."""

from __future__ import annotations

import math

import pytest

from taskd.errors import MAX_RETRY_LATER, RetryLater


@pytest.mark.parametrize("delay", [-1.0, math.nan, math.inf, MAX_RETRY_LATER + 1])
def test_retry_later_refuses_a_delay_outside_0_to_30_days(delay: float) -> None:
    with pytest.raises(ValueError, match=r"RetryLater delay must be from 0 to 2\.592e\+06 seconds"):
        RetryLater(delay)


def test_retry_later_takes_0_and_30_days() -> None:
    assert RetryLater(0).delay == 0
    assert RetryLater(MAX_RETRY_LATER, "tomorrow").delay == MAX_RETRY_LATER
