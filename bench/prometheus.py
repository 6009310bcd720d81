"""Reading the Prometheus text the services expose: sample values, histogram buckets and their quantiles."""

from __future__ import annotations

Buckets = list[tuple[float, float]]
"""A cumulative histogram: `(upper bound, count of observations at or below it)`, ending with `+Inf`."""


def metric(text: str, sample: str) -> float:
    """Sum of the samples whose name (with labels) starts with `sample`; 0 when there is none."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(sample) and line[len(sample)] in " {")


def histogram(text: str, name: str, scale: float = 1.0) -> Buckets:
    """The buckets of histogram `name`, bounds multiplied by `scale` (1e6 for µs from seconds)."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound) * scale, float(line.rsplit(" ", 1)[1])))
    return buckets


def delta(before: Buckets, after: Buckets) -> Buckets:
    """The histogram of what was observed between two scrapes of the same histogram."""
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


def quantile(buckets: Buckets, q: float) -> float:
    """The q-quantile of a cumulative histogram, linear within its bucket (as Prometheus' histogram_quantile)."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 0.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound
