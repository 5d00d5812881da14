"""The two measurements every part shares: a percentile, and back-to-back call times."""

from __future__ import annotations

import time
from collections.abc import Callable


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def time_calls(call: Callable[[], object], n: int) -> list[float]:
    """Seconds of each of ``n`` back-to-back calls (a ``predict`` on the same picture)."""
    latencies = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return latencies
