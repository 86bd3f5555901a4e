"""The event loop's histogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from taskd.metrics import DURATION_BUCKETS, Metrics
from taskd.metrics.histogram import LoopHistogram

amounts = st.lists(
    st.one_of(
        st.floats(min_value=-1.0, max_value=1e4, allow_nan=False),
        st.sampled_from([*DURATION_BUCKETS, 0.0, math.inf]),  # exactly on a bound: `le` holds it
    ),
    max_size=60,
)


def without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def pair() -> tuple[Histogram, LoopHistogram, CollectorRegistry, CollectorRegistry]:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    args = ("taskd_x_seconds", "Some time.", ["queue"])
    return (Histogram(*args, buckets=DURATION_BUCKETS, registry=theirs),
            LoopHistogram(*args, buckets=DURATION_BUCKETS, registry=ours), theirs, ours)


@given(by_queue=st.dictionaries(st.sampled_from(["standard", "lumina", "a-b_c"]), amounts,
                                max_size=3))
def test_the_exposition_is_the_client_librarys_for_any_observations(
    by_queue: dict[str, list[float]],
) -> None:
    client, loop, theirs, ours = pair()
    for queue, values in by_queue.items():
        for value in values:
            client.labels(queue).observe(value)
            loop.labels(queue).observe(value)
    assert without_created(generate_latest(ours)) == without_created(generate_latest(theirs))
    assert (without_created(generate_openmetrics(ours))
            == without_created(generate_openmetrics(theirs)))


@pytest.fixture
def created_series() -> Iterator[None]:
    """The client library's *_created series on, as without taskd's Metrics (which turns
    them off for the whole process); off again after."""
    enable_created_metrics()
    try:
        yield
    finally:
        disable_created_metrics()


@pytest.mark.usefixtures("created_series")
def test_each_label_set_has_a_created_sample_as_the_client_librarys_has() -> None:
    client, loop, theirs, ours = pair()
    client.labels("standard").observe(0.2)
    loop.labels("standard").observe(0.2)

    def created(registry: CollectorRegistry) -> list[str]:
        return [line.rsplit(" ", 1)[0] for line in generate_latest(registry).decode().splitlines()
                if "_created" in line]

    assert created(ours) == created(theirs)
    assert 'taskd_x_seconds_created{queue="standard"}' in created(ours)


def test_a_name_already_registered_is_refused_like_the_client_librarys() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LoopHistogram("taskd_subtask_wait_seconds", "again", ["queue"], buckets=(1.0,),
                      registry=registry)


def test_labels_must_match_the_label_names() -> None:
    _, loop, _, _ = pair()
    with pytest.raises(ValueError, match=r"takes labels \('queue',\)"):
        loop.labels("standard", "extra")


def test_a_scrape_while_the_loop_observes_sees_consistent_counts() -> None:
    """A scrape from another thread while observations and new label sets arrive: no scrape
    fails, and a count never goes down from one scrape to the next."""
    _, loop, _, ours = pair()
    done = threading.Event()
    seen: list[float] = []
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not done.is_set():
                generate_latest(ours)
                for metric in ours.collect():
                    for sample in metric.samples:
                        if sample.name.endswith("_count") and sample.labels["queue"] == "q0":
                            seen.append(sample.value)
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    scraper = threading.Thread(target=scrape)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    scraper.start()
    try:
        for i in range(20_000):
            loop.labels(f"q{i % 1000}").observe(i / 1000)
    finally:
        done.set()
        scraper.join()
        sys.setswitchinterval(interval)
    assert not errors
    assert seen and seen == sorted(seen), seen[:10]
