"""One error path: JSON under ``/api`` and for probes, an HTML page everywhere else.

Every failure becomes a 4xx/5xx answer with a message written for the user; a
traceback only ever goes to the server log.
"""

from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, Response, g, jsonify, render_template, request
from markupsafe import escape
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout
from werkzeug.http import HTTP_STATUS_CODES

from ..errors import ImageclfError, ImageError
from .extensions import get_metrics
from .uploads import MB, drain_body, stop_reading

log = logging.getLogger("imageclf.web")

_DEFAULT_413 = RequestEntityTooLarge.description
# A request id a client or proxy may pass in X-Request-ID; anything else gets our own.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id() -> str:
    """This request's id: in the JSON error, the X-Request-ID header and the server log."""
    if "request_id" not in g:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    return g.request_id


def wants_json() -> bool:
    """API clients and probes get JSON; people get HTML."""
    path = request.path
    return path.startswith("/api/") or path in ("/healthz", "/readyz", "/metrics")


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    """Render one error for whoever asked, with the right status code."""
    title = HTTP_STATUS_CODES.get(status, "Error")
    if wants_json():
        body = {"status": status, "title": title, "message": message, "request_id": request_id()}
        response = jsonify({"error": body})
    else:
        response = Response(_error_page(status, title, message))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _error_page(status: int, title: str, message: str) -> str:
    """The page for an error; if the page itself cannot be rendered (the failure may lie in
    what every page shows, like the model's name), a bare page that needs nothing."""
    try:
        if request.endpoint == "pages.predict" and status != 401:  # no form without a key
            from .pages import render_index  # the upload form again, with the reason on top

            return render_index(error=message, error_title=f"{status} {title}")
        return render_template(
            "error.html", status=status, title=title, message=message, request_id=request_id()
        )
    except Exception:
        log.exception("cannot render the error page (request %s)", request_id())
        return (
            f"<!doctype html><title>{status} {escape(title)}</title><h1>{status} "
            f"{escape(title)}</h1><p>{escape(message)}</p><p>Reference: {request_id()}</p>"
        )


def _too_large_message(exc: HTTPException) -> str:
    if exc.description and exc.description != _DEFAULT_413:
        return exc.description
    limit = request.max_content_length or 0
    return (
        f"the upload is too large: images may be at most {limit // MB} MB "
        "(and a form at most a few dozen parts)"
    )


def register(app: Flask) -> None:
    """Install the handlers on ``app``."""
    metrics = get_metrics(app)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Response:
        drain_body(request)  # so the client reads this answer, not a connection reset
        stop_reading(request)
        metrics.count_rejected(413)
        # The rest of a refused body may still be in flight: don't reuse the connection.
        return error_response(413, _too_large_message(exc), {"Connection": "close"})

    @app.errorhandler(RequestTimeout)
    def too_slow(exc: RequestTimeout) -> Response:
        # The rest of the body may still trickle in: never reuse this connection.
        stop_reading(request)
        return error_response(408, exc.description or "request timeout", {"Connection": "close"})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        status = exc.code or 500
        message = exc.description or HTTP_STATUS_CODES.get(status, "error")
        if status == 404:
            message = f"there is nothing at {request.path}"
        return error_response(status, message, headers)

    @app.errorhandler(ImageclfError)
    def user_error(exc: ImageclfError) -> Response:
        if isinstance(exc, ImageError):
            metrics.count_rejected(exc.http_status)
        return error_response(exc.http_status, str(exc), getattr(exc, "headers", None))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception(
            "unhandled error on %s %s (request %s)", request.method, request.path, request_id()
        )
        return error_response(500, "something went wrong on our side; the error was logged")
