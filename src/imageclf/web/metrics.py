"""Prometheus metrics in plain Python: request counts, latency, predictions by class.

Counters live in the process that served the request. Under gunicorn each worker
keeps its own, so a scrape sees one worker at a time; sum ``rate()`` across scrapes
or run one worker per container when exact totals matter.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter

# Seconds: from a cached static file (~1 ms) up to a 64-image batch with Grad-CAM.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return "{" + inner + "}" if inner else ""


class Metrics:
    """Thread-safe counters and one latency histogram per endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.predictions: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._buckets: dict[str, list[int]] = {}
        self._sums: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, method, str(status))] += 1
            buckets = self._buckets.setdefault(endpoint, [0] * len(LATENCY_BUCKETS))
            index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
            if index < len(buckets):
                buckets[index] += 1
            self._sums[endpoint] += seconds
            self._counts[endpoint] += 1

    def count_predictions(self, labels: list[str]) -> None:
        with self._lock:
            self.predictions.update(labels)

    def count_rejected(self, status: int) -> None:
        with self._lock:
            self.rejected[str(status)] += 1

    def render(self, *, ready: bool, model: str | None, classes: list[str] | None = None) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        out: list[str] = []
        with self._lock:
            out += [
                "# HELP imageclf_http_requests_total HTTP requests by endpoint, method and status.",
                "# TYPE imageclf_http_requests_total counter",
            ]
            for (endpoint, method, status), n in sorted(self.requests.items()):
                labels = _labels(endpoint=endpoint, method=method, status=status)
                out.append(f"imageclf_http_requests_total{labels} {n}")
            out += [
                "# HELP imageclf_http_request_duration_seconds Time to answer a request.",
                "# TYPE imageclf_http_request_duration_seconds histogram",
            ]
            for endpoint in sorted(self._buckets):
                running = 0
                for bound, n in zip(LATENCY_BUCKETS, self._buckets[endpoint], strict=True):
                    running += n
                    labels = _labels(endpoint=endpoint, le=f"{bound:g}")
                    out.append(f"imageclf_http_request_duration_seconds_bucket{labels} {running}")
                total = self._counts[endpoint]
                inf = _labels(endpoint=endpoint, le="+Inf")
                out.append(f"imageclf_http_request_duration_seconds_bucket{inf} {total}")
                plain = _labels(endpoint=endpoint)
                out.append(
                    f"imageclf_http_request_duration_seconds_sum{plain} {self._sums[endpoint]:.6f}"
                )
                out.append(f"imageclf_http_request_duration_seconds_count{plain} {total}")
            out += [
                "# HELP imageclf_predictions_total Images classified, by top-1 class.",
                "# TYPE imageclf_predictions_total counter",
            ]
            for label in sorted(set(classes or []) | set(self.predictions)):
                out.append(
                    f"imageclf_predictions_total{_labels(label=label)} {self.predictions[label]}"
                )
            out += [
                "# HELP imageclf_images_rejected_total Uploads refused, by HTTP status.",
                "# TYPE imageclf_images_rejected_total counter",
            ]
            for status, n in sorted(self.rejected.items()):
                out.append(f"imageclf_images_rejected_total{_labels(status=status)} {n}")
        out += [
            "# HELP imageclf_model_ready 1 once the model is loaded and serving.",
            "# TYPE imageclf_model_ready gauge",
            f"imageclf_model_ready{_labels(model=model or '')} {int(ready)}",
        ]
        return "\n".join(out) + "\n"
