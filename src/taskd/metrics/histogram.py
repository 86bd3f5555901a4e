"""A Prometheus histogram for what the event loop observes once per subtask.

``prometheus_client.Histogram`` takes a lock for the sum and another for the bucket, and walks the
bounds in Python, twice per subtask: a visible share of a daemon's CPU draining noops
(docs/benchmarks.md). Here an observation is a bisection and two additions, with no lock: every
observation comes from the daemon's event loop thread, and a scrape from the metrics thread reads
Python ints and floats, which no reader can see half written. A scrape may see an observation in its
bucket before it is in the sum; Prometheus tolerates that as it tolerates a scrape between the
client library's two locks.

The exposition is prometheus_client's own: ``_bucket`` (cumulative, ``le`` as the client
library formats it), ``_count``, ``_sum`` and ``_created`` per label set (``_created`` unless
the client library's created series are turned off, e.g. ``PROMETHEUS_DISABLE_CREATED_SERIES``).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as client_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString


class HistogramChild:
    """One label set's buckets; :meth:`observe` is the hot path."""

    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # The first bound >= amount: the bucket `le` counts it in (the last bound is +Inf).
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class LoopHistogram:
    """A labelled histogram observed from one thread; registered like a client histogram."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = tuple(bounds)
        # `le` as the client library writes it (0.001, 1.0, +Inf), once.
        self._les = tuple(floatToGoString(b) for b in bounds)  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            # A new dict, not an insertion into the one a scrape may be iterating over.
            child = HistogramChild(self._bounds)
            self._children = {**self._children, values: child}
        return child

    def describe(self) -> Iterable[Metric]:
        return [Metric(self.name, self.documentation, "histogram")]

    def collect(self) -> Iterable[Metric]:
        metric = Metric(self.name, self.documentation, "histogram")
        created = getattr(client_metrics, "_use_created", True)
        for values, child in self._children.items():
            labels = dict(zip(self.labelnames, values, strict=True))
            total = 0
            for le, count in zip(self._les, list(child.counts), strict=True):
                total += count
                metric.add_sample(f"{self.name}_bucket", {**labels, "le": le}, total)
            metric.add_sample(f"{self.name}_count", labels, total)
            metric.add_sample(f"{self.name}_sum", labels, child.sum)
            if created:
                metric.add_sample(f"{self.name}_created", labels, child.created)
        return [metric]
