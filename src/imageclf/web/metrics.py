"""Prometheus metrics that stay right when gunicorn runs several workers.

``imageclf serve`` gives every server start a fresh, empty folder
(``PROMETHEUS_MULTIPROC_DIR``) before any worker starts; prometheus_client's
multiprocess mode then keeps each worker's counters and histograms in files there,
and a scrape answered by any worker sums them all. When a worker exits,
``mark_process_dead`` drops its live gauges (its counters stay: they are history).
Without that folder (the test client, ``serve --debug``) everything lives in the
process.

Every label value comes from a fixed set, so no client can create new series:
route templates (``/static/<path:filename>``, never a raw path), known methods,
status classes (``2xx``), model classes, API key names from the key file, and
``other`` for anything else.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as _values

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What generate_latest writes (names and labels here are plain ASCII, so no escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds: from a cached static file (~1 ms) up to a 64-image batch with Grad-CAM.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Pictures per forward pass: concurrent requests share passes (web/forward.py).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def route_label(rule: str | None) -> str:
    """The matched route template; unmatched paths (404, 405) all share ``other``."""
    return rule or OTHER


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER


def status_label(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The app's counters, histogram and gauges; one instance per app (per worker)."""

    def __init__(self) -> None:
        # Metrics register here, not in prometheus_client's global registry, so several
        # apps in one process (tests) never collide.
        self._registry = CollectorRegistry()
        registry = self._registry
        self.requests = Counter(
            "imageclf_http_requests",
            "HTTP requests answered, by route template, method and status class.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "imageclf_http_request_duration_seconds",
            "Time to answer a request, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "imageclf_predictions",
            "Images classified, by top-1 class.",
            ["label"],
            registry=registry,
        )
        self.batch = Histogram(
            "imageclf_forward_pass_images",
            "Pictures per forward pass of the model (requests waiting together share one).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "imageclf_images_rejected",
            "Uploads refused, by HTTP status.",
            ["status"],
            registry=registry,
        )
        # livemin: 1 only when every live worker has its model loaded.
        self.ready = Gauge(
            "imageclf_model_ready",
            "1 once the model is loaded and serving (in every live worker).",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.model = Gauge(
            "imageclf_model_info",
            "The model being served (value 1), by name and backend.",
            ["model", "backend"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        # API keys (web/auth.py): by name from the key file, "anonymous" or "invalid".
        self.key_requests = Counter(
            "imageclf_key_requests",
            "Requests to guarded routes, by API key name and status class.",
            ["key", "status"],
            registry=registry,
        )
        self.throttled = Counter(
            "imageclf_key_throttled",
            "Requests refused (429) because the key was over its quota, by key name.",
            ["key"],
            registry=registry,
        )
        # Reloads (web/reload.py), counted where the version was decided: switched,
        # failed (does not load or answer), refused (classes, memory); by served name.
        self.reloads = Counter(
            "imageclf_model_reload",
            "Model versions checked for a reload, by served name and outcome.",
            ["model", "outcome"],
            registry=registry,
        )
        self._models: frozenset[str] = frozenset()
        self._classes: frozenset[str] = frozenset()
        self._keys: frozenset[str] = frozenset()
        self.ready.set(0)

    # ------------------------------------------------------------ recording
    def observe_request(self, rule: str | None, method: str, status: int, seconds: float) -> None:
        route = route_label(rule)
        self.requests.labels(route, method_label(method), status_label(status)).inc()
        self.duration.labels(route).observe(seconds)

    def model_loaded(self, name: str, backend: str, classes: list[str]) -> None:
        """Called once the worker's model is loaded: ready, and a zero per class."""
        self._classes = self._classes | frozenset(classes)  # every served model's
        for label in classes:
            self.predictions.labels(label)
        self.model.labels(name, backend).set(1)
        self.ready.set(1)

    def allow_models(self, names: list[str]) -> None:
        """The served names (``serve --model NAME=PATH``): the reload counter's labels."""
        self._models = frozenset(names)

    def count_reload(self, model: str, outcome: str) -> None:
        from .reload import OUTCOMES

        self.reloads.labels(
            model if model in self._models else OTHER, outcome if outcome in OUTCOMES else OTHER
        ).inc()

    def count_predictions(self, labels: list[str]) -> None:
        for label in labels:
            self.predictions.labels(label if label in self._classes else OTHER).inc()

    def forward_pass(self, images: int) -> None:
        self.batch.observe(images)

    def count_rejected(self, status: int) -> None:
        self.rejected.labels(str(status) if 400 <= status <= 599 else OTHER).inc()

    def allow_keys(self, names: list[str]) -> None:
        """The key names that may be labels (the key file's, anonymous, invalid)."""
        self._keys = frozenset(names)

    def _key_label(self, name: str) -> str:
        return name if name in self._keys else OTHER

    def observe_key(self, name: str, status: int) -> None:
        self.key_requests.labels(self._key_label(name), status_label(status)).inc()

    def count_throttled(self, name: str) -> None:
        self.throttled.labels(self._key_label(name)).inc()

    # ------------------------------------------------------------ exposing
    def render(self) -> tuple[bytes, str]:
        """(body, content type) in the Prometheus text format: every worker's numbers
        summed in multiprocess mode, this process's otherwise."""
        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self._registry), CONTENT_TYPE
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
        return generate_latest(registry), CONTENT_TYPE


# ---------------------------------------------------------------- the server side
def start_multiprocess_dir() -> Path:
    """A fresh, empty folder for this server start, set before any worker exists.

    A folder left from an earlier run would add its old counts to the new ones, so it is
    never reused.
    """
    folder = Path(tempfile.mkdtemp(prefix="imageclf-metrics-"))
    os.environ[MULTIPROC_ENV] = str(folder)
    # prometheus_client picks its value store when first imported; re-pick it now that
    # the folder is set (workers fork from this process and inherit the choice).
    _values.ValueClass = _values.get_value_class()
    return folder


def gunicorn_hooks(folder: Path) -> dict[str, Any]:
    """Server hooks for the master: forget dead workers' live gauges, remove the folder."""

    def child_exit(server, worker) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path=str(folder))

    def on_exit(server) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    return {"child_exit": child_exit, "on_exit": on_exit}
