"""Probes and metrics for whoever runs the server: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from .metrics import Metrics
from .service import ModelService

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers. Always 200, even while the model loads."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: 200 once the model is loaded, 503 before (or if loading failed)."""
    service: ModelService = current_app.extensions["imageclf"]
    if service.ready:
        return jsonify({"status": "ready", "model": service.predictor().name}), 200
    body = {"status": "loading" if service.error is None else "failed"}
    if service.error:
        body["error"] = service.error
    return jsonify(body), 503


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format: every worker's numbers, whichever worker answers."""
    registry: Metrics = current_app.extensions["imageclf.metrics"]
    body, content_type = registry.render()
    return Response(body, content_type=content_type)
