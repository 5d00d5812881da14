"""Where the app keeps its per-process objects, and the one way to reach them.

Flask's ``get_db()`` habit: views call ``get_service()`` / ``get_metrics()`` instead
of spelling ``current_app.extensions[...]`` keys, so the storage can change in one place.
"""

from __future__ import annotations

from flask import Flask, current_app

from .metrics import Metrics
from .service import ModelService

_SERVICE = "imageclf.service"
_METRICS = "imageclf.metrics"


def init_extensions(app: Flask, service: ModelService, metrics: Metrics) -> None:
    """Attach the model service and the metrics registry to ``app``."""
    app.extensions[_SERVICE] = service
    app.extensions[_METRICS] = metrics


def get_service(app: Flask | None = None) -> ModelService:
    """The model service of ``app`` (default: the app handling this request)."""
    return (app or current_app).extensions[_SERVICE]


def get_metrics(app: Flask | None = None) -> Metrics:
    """The metrics registry of ``app`` (default: the app handling this request)."""
    return (app or current_app).extensions[_METRICS]
