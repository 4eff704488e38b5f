"""Pure arithmetic of the benchmark: summaries of repeated runs, ratios, targets."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Median, minimum and maximum of repeated measurements of one figure."""

    median: float
    low: float
    high: float
    runs: int

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": self.runs}


def summarize(values: Sequence[float]) -> Summary | None:
    """None when nothing was measured (a method that failed for this size)."""
    clean = [float(v) for v in values if v is not None]
    if not clean:
        return None
    return Summary(statistics.median(clean), min(clean), max(clean), len(clean))


def ratio(numerator: Summary | None, denominator: Summary | None) -> float | None:
    """Ratio of two medians; None when either is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator.median == 0:
        return None
    return numerator.median / denominator.median


def overhead_ms(ours: Summary | None, base: Summary | None) -> float | None:
    if ours is None or base is None:
        return None
    return ours.median - base.median


def throughput_mb_s(size_bytes: float | None, millis: float | None) -> float | None:
    """Megabytes (10^6 bytes) per second; None when either input is missing or zero."""
    if not size_bytes or not millis:
        return None
    return size_bytes / 1e6 / (millis / 1000.0)


@dataclass(frozen=True)
class Target:
    """A stated goal: `value <= limit` (all our targets are upper bounds)."""

    name: str
    limit: float

    def verdict(self, value: float | None) -> str:
        if value is None:
            return "not measured"
        return "met" if value <= self.limit else "missed"


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of y over x; None with fewer than two distinct x."""
    pairs = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None]
    if len({x for x, _ in pairs}) < 2:
        return None
    n = len(pairs)
    mean_x = sum(x for x, _ in pairs) / n
    mean_y = sum(y for _, y in pairs) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in pairs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in pairs)
    slope = sxy / sxx
    return mean_y - slope * mean_x, slope
