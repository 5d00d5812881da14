"""The web app: upload pages, the JSON API, health checks and metrics.

``create_app`` is the factory (Flask's flaskr shape): gunicorn calls it once per
worker, tests call it with a tiny model. One blueprint per concern:
``pages`` (HTML), ``api`` (``/api/v1``) and ``ops`` (``/healthz``, ``/readyz``,
``/metrics``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from flask import Flask, Response, g, request

from ..imaging import MAX_PIXELS
from .metrics import Metrics
from .service import ModelService
from .uploads import FORM_OVERHEAD_BYTES, MAX_FILES, MAX_UPLOAD_BYTES, InMemoryRequest

log = logging.getLogger("imageclf.web")

# Everything the pages need comes from our own origin; previews are blob:/data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # The upload page may use the webcam (our own origin only); nothing else.
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=(), interest-cohort=()",
}

DEFAULTS: dict[str, Any] = {
    # Body limit before anything is read; the form parser enforces the other two.
    "MAX_CONTENT_LENGTH": MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES,
    "MAX_FORM_MEMORY_SIZE": 256 * 1024,  # text fields; must exceed the parser's 64 KiB chunk
    "MAX_FORM_PARTS": MAX_FILES + 16,  # files, file, top_k, explain and some slack
    "JSON_SORT_KEYS": False,
    "IMAGECLF_MAX_UPLOAD_BYTES": MAX_UPLOAD_BYTES,
    "IMAGECLF_MAX_FILES": MAX_FILES,
    "IMAGECLF_MAX_PIXELS": MAX_PIXELS,
    # eager: load in create_app; background: load in a thread (/readyz says when);
    # manual: never (tests call ``app.extensions["imageclf"].load()``).
    "IMAGECLF_MODEL_LOADING": "background",
    # A prediction that arrives while the model loads waits this long before a 503.
    "IMAGECLF_MODEL_WAIT_S": 30.0,
    "IMAGECLF_TORCH_THREADS": None,
    # Grad-CAM on the result page (when imageclf.gradcam is installed).
    "IMAGECLF_EXPLAIN_PAGES": True,
}


def create_app(model_path: str | os.PathLike | None = None, **config: Any) -> Flask:
    """Build the app around one model file (``None``: the bundled default model).

    Keyword arguments override ``DEFAULTS`` and Flask's own settings.
    """
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.update(DEFAULTS)
    app.config.update(config)

    metrics = Metrics()
    service = ModelService(
        model_path,
        max_pixels=int(app.config["IMAGECLF_MAX_PIXELS"]),
        torch_threads=app.config["IMAGECLF_TORCH_THREADS"],
        on_loaded=lambda p: metrics.model_loaded(p.name, _backend(p), p.classes),
    )
    app.extensions["imageclf"] = service
    app.extensions["imageclf.metrics"] = metrics

    from . import api, errors, ops, pages

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    errors.register(app)
    _register_hooks(app)

    loading = app.config["IMAGECLF_MODEL_LOADING"]
    if loading == "eager":
        service.load()
    elif loading == "background":
        service.load_in_background()
    elif loading != "manual":
        raise ValueError(f"IMAGECLF_MODEL_LOADING must be eager, background or manual: {loading}")
    return app


def _backend(predictor) -> str:
    return "pytorch" if predictor.explainable else "onnxruntime"


_STATIC_HEADERS = tuple(SECURITY_HEADERS.items())
_PAGE_HEADERS = (*_STATIC_HEADERS, ("Cache-Control", "no-store"))


def _add_missing(headers, defaults: tuple[tuple[str, str], ...]) -> None:
    """``setdefault`` for several headers in one pass (it rescans the list per call)."""
    present = {key.lower() for key, _ in headers}
    headers.extend([(k, v) for k, v in defaults if k.lower() not in present])


def _register_hooks(app: Flask) -> None:
    metrics: Metrics = app.extensions["imageclf.metrics"]

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def finish(response: Response) -> Response:
        # Results hold the user's picture: never let a shared cache keep them.
        defaults = _PAGE_HEADERS if request.endpoint != "static" else _STATIC_HEADERS
        _add_missing(response.headers, defaults)
        rule = request.url_rule.rule if request.url_rule else None  # a template, not the path
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        metrics.observe_request(rule, request.method, response.status_code, elapsed)
        return response


__all__ = ["DEFAULTS", "create_app"]
