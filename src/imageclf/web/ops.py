"""Probes and metrics for whoever runs the server: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .extensions import get_metrics, get_service

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers. Always 200, even while the model loads."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: 200 once the model is loaded, 503 before (or if loading failed)."""
    service = get_service()
    if service.ready:
        return jsonify({"status": "ready", "model": service.predictor().name}), 200
    body = {"status": "loading" if service.error is None else "failed"}
    if service.error:
        body["error"] = service.error
    return jsonify(body), 503


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format: every worker's numbers, whichever worker answers."""
    body, content_type = get_metrics().render()
    return Response(body, content_type=content_type)
