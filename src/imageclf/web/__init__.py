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
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, Response, g, request

from ..allocator import keep_large_blocks_on_mmap
from ..imaging import DECODE_SECONDS, MAX_PIXELS, MAX_REQUEST_PIXELS
from .auth import init_auth
from .decoding import CLIENT_DECODE_SECONDS, WINDOW_S, DecodeLedger, DecodeScheduler
from .errors import request_id
from .extensions import get_metrics, init_extensions
from .feedback import DEFAULT_BURST, DEFAULT_PER_MINUTE, DEFAULT_QUOTA_MB, init_feedback
from .forward import MAX_BATCH_ROWS
from .metrics import Metrics
from .model_store import ModelStore
from .models import ModelSpec
from .reload import RELOAD_POLL_S
from .service import ModelService
from .uploads import (
    BODY_TIMEOUT_S,
    FORM_OVERHEAD_BYTES,
    MAX_FILES,
    MAX_UPLOAD_BYTES,
    BodyDeadline,
    InMemoryRequest,
)

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
    "IMAGECLF_MAX_PIXELS": MAX_PIXELS,  # per image, from its header
    # What one request may spend decoding, all its images together (413 beyond).
    "IMAGECLF_MAX_REQUEST_PIXELS": MAX_REQUEST_PIXELS,
    "IMAGECLF_DECODE_SECONDS": DECODE_SECONDS,
    # What one client may spend decoding per window in each worker (429 beyond).
    "IMAGECLF_CLIENT_DECODE_SECONDS": CLIENT_DECODE_SECONDS,
    "IMAGECLF_DECODE_WINDOW_S": WINDOW_S,
    # The pass that merges concurrent requests: at most this many pictures, and how long
    # one that is not full waits for more (serve --max-batch, --batch-wait-ms).
    "IMAGECLF_MAX_BATCH": MAX_BATCH_ROWS,
    "IMAGECLF_BATCH_WAIT_MS": 0.0,
    # Proxies in front that append to X-Forwarded-For (0: clients connect directly).
    # With one, the client each decoding share belongs to is the address it saw.
    "IMAGECLF_PROXY_HOPS": 0,
    # eager: load in create_app; background: load in a thread (/readyz says when);
    # manual: never (tests call ``get_service(app).load()``).
    "IMAGECLF_MODEL_LOADING": "background",
    # Several models and hot reload (web/models.py, web/reload.py): the folder of checked
    # versions the workers share (None: one of this process's own); how often each
    # worker looks at the model files (0: only SIGHUP and POST .../reload); whether a new
    # version may change the classes; the memory all models may take in a worker (MB).
    "IMAGECLF_MODEL_STORE": None,
    "IMAGECLF_RELOAD_POLL_S": RELOAD_POLL_S,
    "IMAGECLF_ALLOW_CLASS_CHANGE": False,
    "IMAGECLF_MAX_MODEL_MEMORY_MB": None,
    # POST /api/v1/models/NAME/reload without API keys: only from this machine, directly.
    "IMAGECLF_ALLOW_RELOAD": "loopback",
    # A prediction that arrives while the model loads waits this long before a 503.
    "IMAGECLF_MODEL_WAIT_S": 30.0,
    "IMAGECLF_TORCH_THREADS": None,
    # A request's whole body must arrive within this many seconds (408 otherwise).
    "IMAGECLF_BODY_TIMEOUT_S": BODY_TIMEOUT_S,
    # Grad-CAM on the result page (costs a backward pass per upload).
    "IMAGECLF_EXPLAIN_PAGES": True,
    # A multi-label model's one threshold for every label (serve --threshold); None: each
    # label's own, chosen on validation (web/label_results.py).
    "IMAGECLF_THRESHOLD": None,
    # explain=true in the API: at most this many images per request (400 beyond).
    "IMAGECLF_MAX_EXPLAIN_FILES": 16,
    # API keys (web/auth.py): a key file's path or a loaded keys.KeyRing (None: open).
    # Rate ("300/min") and burst for keys whose line sets none (None: unlimited).
    "IMAGECLF_API_KEYS": None,
    "IMAGECLF_KEY_RATE": None,
    "IMAGECLF_KEY_BURST": None,
    "IMAGECLF_PROTECT_PAGE": False,  # the pages need a key too (HTTP Basic in a browser)
    "IMAGECLF_PROTECT_METRICS": False,
    # Feedback (web/feedback.py): the folder (None: off), its quota, each client's rate.
    "IMAGECLF_FEEDBACK_DIR": None,
    "IMAGECLF_FEEDBACK_QUOTA_MB": DEFAULT_QUOTA_MB,
    "IMAGECLF_FEEDBACK_PER_MINUTE": DEFAULT_PER_MINUTE,
    "IMAGECLF_FEEDBACK_BURST": DEFAULT_BURST,
}


def create_app(
    model_path: str | os.PathLike | None = None,
    *,
    models: Sequence[ModelSpec] | None = None,
    **config: Any,
) -> Flask:
    """Build the app around one model file (``None``: the bundled default model), or
    several (``models``, from ``models.parse_model_specs``; the first is the default).

    Keyword arguments override ``DEFAULTS`` and Flask's own settings.
    """
    keep_large_blocks_on_mmap()  # so big uploads' memory is returned, not kept by malloc
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.update(DEFAULTS)
    app.config.update(config)
    if "MAX_FORM_PARTS" not in config:  # follows the file limit: files, fields and slack
        app.config["MAX_FORM_PARTS"] = int(app.config["IMAGECLF_MAX_FILES"]) + 16

    metrics = Metrics()
    store = app.config["IMAGECLF_MODEL_STORE"]
    memory_mb = app.config["IMAGECLF_MAX_MODEL_MEMORY_MB"]
    service = ModelService(
        models or model_path,
        max_pixels=int(app.config["IMAGECLF_MAX_PIXELS"]),
        max_request_pixels=int(app.config["IMAGECLF_MAX_REQUEST_PIXELS"]),
        decode_seconds=float(app.config["IMAGECLF_DECODE_SECONDS"]),
        torch_threads=app.config["IMAGECLF_TORCH_THREADS"],
        on_loaded=lambda p: metrics.model_loaded(p.name, p.backend, p.classes),
        on_forward_pass=metrics.forward_pass,
        on_reload=metrics.count_reload,
        max_batch=int(app.config["IMAGECLF_MAX_BATCH"]),
        batch_wait_ms=float(app.config["IMAGECLF_BATCH_WAIT_MS"]),
        decoder=DecodeScheduler(
            DecodeLedger(
                float(app.config["IMAGECLF_CLIENT_DECODE_SECONDS"]),
                float(app.config["IMAGECLF_DECODE_WINDOW_S"]),
            )
        ),
        store=ModelStore(Path(store)) if store else None,
        memory_limit_mb=float(memory_mb) if memory_mb else None,
        allow_class_change=bool(app.config["IMAGECLF_ALLOW_CLASS_CHANGE"]),
        reload_poll_s=float(app.config["IMAGECLF_RELOAD_POLL_S"]),
    )
    metrics.allow_models(list(service.slots))
    init_extensions(app, service, metrics)
    init_feedback(app)
    app.wsgi_app = BodyDeadline(app.wsgi_app, float(app.config["IMAGECLF_BODY_TIMEOUT_S"]))
    hops = int(app.config["IMAGECLF_PROXY_HOPS"])
    if hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops)

    from . import api, errors, ops, pages

    app.json = api.StrictJSONProvider(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    errors.register(app)
    _register_hooks(app)
    init_auth(app)  # after the timer and request id: a refusal is timed and identified

    loading = app.config["IMAGECLF_MODEL_LOADING"]
    if loading == "eager":
        service.load()
    elif loading == "background":
        service.load_in_background()
    elif loading != "manual":
        raise ValueError(f"IMAGECLF_MODEL_LOADING must be eager, background or manual: {loading}")
    return app


_STATIC_HEADERS = tuple(SECURITY_HEADERS.items())
_PAGE_HEADERS = (*_STATIC_HEADERS, ("Cache-Control", "no-store"))


def _add_missing(headers, defaults: tuple[tuple[str, str], ...]) -> None:
    """``setdefault`` for several headers in one pass (it rescans the list per call)."""
    present = {key.lower() for key, _ in headers}
    headers.extend([(k, v) for k, v in defaults if k.lower() not in present])


def _register_hooks(app: Flask) -> None:
    metrics = get_metrics(app)

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()
        request_id()  # taken from X-Request-ID if the client (or a proxy) sent a sane one

    @app.after_request
    def identify(response: Response) -> Response:
        response.headers["X-Request-ID"] = request_id()
        location = response.headers.get("Location")
        if location:
            response.headers["Location"] = relative_location(location)
        return response

    @app.after_request
    def finish(response: Response) -> Response:
        # Results hold the user's picture: never let a shared cache keep them.
        defaults = _PAGE_HEADERS if request.endpoint != "static" else _STATIC_HEADERS
        _add_missing(response.headers, defaults)
        rule = request.url_rule.rule if request.url_rule else None  # a template, not the path
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        metrics.observe_request(rule, request.method, response.status_code, elapsed)
        return response


def relative_location(location: str) -> str:
    """A redirect target without scheme and host: Werkzeug builds routing redirects
    (``/static//x`` -> ``/static/x``) from the client's Host header, which would let
    anyone point our redirects at their own site."""
    parts = urlsplit(location)
    path = "/" + parts.path.lstrip("/")  # "//evil.example" must not become protocol-relative
    return urlunsplit(("", "", path, parts.query, parts.fragment))


__all__ = ["DEFAULTS", "create_app"]
