"""API keys at the door: which requests need one, reading it, 401 and 429.

With ``--api-keys FILE`` (``keys.py``), everything under ``/api/`` needs a key; the
pages (``/``, ``/predict``) too with ``--protect-page``, and ``/metrics`` with
``--protect-metrics``; ``/healthz``, ``/readyz`` and ``/static/`` stay open. A request
names its key as ``Authorization: Bearer KEY``, or as the password of HTTP Basic (what
a browser's login prompt sends; the user name is ignored). The key is hashed and
compared with every stored hash by ``hmac.compare_digest``. Requests are counted per
key *name* (the file's names, ``anonymous``, ``invalid``), so metric labels stay a fixed
set, and the name is what the access log shows. A key over its quota gets a 429 with
Retry-After (``quota.py``: one budget per key, shared by every worker).
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request

from ..errors import UserInputError
from ..fileio import printable
from .extensions import get_metrics
from .keys import ANONYMOUS, INVALID, KeyRing, parse_rate

MAX_HEADER_CHARS = 1024  # a Bearer key is 43 characters; gunicorn's own limit is 8190
MAX_KEY_CHARS = 256
REALM = "imageclf"
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 7235's token68: what Bearer carries
# Where the access log finds the key's name: the format's %({imageclf.key}e)s.
ENVIRON_KEY = "imageclf.key"

log = logging.getLogger("imageclf.web")

# ---------------------------------------------------------------- the request side
MISSING = "this needs an API key: send the header 'Authorization: Bearer KEY'"
MALFORMED = (
    "the Authorization header must be 'Bearer KEY' (or HTTP Basic with the key as the password)"
)
TOO_LONG = f"the Authorization header is too long (at most {MAX_HEADER_CHARS} characters)"
WRONG = "this API key is not valid"


def read_credentials(header: str | None) -> tuple[str | None, str | None]:
    """(the key a request presents, None) or (None, why not). RFC 7235: the scheme is
    case-insensitive and one or more spaces separate it from the credentials."""
    if header is None or not header.strip(" \t"):
        return None, MISSING
    if len(header) > MAX_HEADER_CHARS:
        return None, TOO_LONG
    scheme, _, token = header.strip(" \t").partition(" ")
    token = token.lstrip(" ")
    if not _TOKEN68.fullmatch(token) or len(token) > MAX_KEY_CHARS * 2:
        return None, MALFORMED
    if scheme.lower() == "bearer":
        key = token
    elif scheme.lower() == "basic":
        try:
            _, colon, key = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
        except ValueError:  # not base64, or not UTF-8
            return None, MALFORMED
        if not colon or not key:
            return None, MALFORMED
    else:
        return None, MALFORMED
    return (key, None) if len(key) <= MAX_KEY_CHARS else (None, MALFORMED)


def _guard(config: Mapping[str, Any]) -> str | None:
    """What protects this request: 'api', 'page', 'metrics', or None (open)."""
    if request.blueprint == "api" or request.path.startswith("/api/"):  # unknown ones too
        return "api"
    if request.blueprint == "pages" and config["IMAGECLF_PROTECT_PAGE"]:
        return "page"
    if request.endpoint == "ops.metrics" and config["IMAGECLF_PROTECT_METRICS"]:
        return "metrics"
    return None


def _refuse(status: int, message: str, headers: dict[str, str]) -> Response:
    """A 401/429 that the client reads: a refused body is drained (bounded) and the
    connection closed after it, as for a 413."""
    from .errors import error_response
    from .uploads import drain_body, stop_reading

    # (gunicorn marks every request wsgi.input_terminated: ask the headers for a body)
    if request.content_length or "chunked" in request.headers.get("Transfer-Encoding", ""):
        drain_body(request)
        stop_reading(request)
        headers = {**headers, "Connection": "close"}
    return error_response(status, message, headers)


def _challenge(guard: str, problem: str | None) -> str:
    if guard == "page":  # a browser shows its login prompt for Basic (user: anything)
        return f'Basic realm="{REALM}", charset="UTF-8"'
    error = ', error="invalid_token"' if problem != MISSING else ""
    return f'Bearer realm="{REALM}"{error}'


def _authenticate(ring: KeyRing, config: Mapping[str, Any]) -> Response | None:
    guard = _guard(config)
    if guard is None:
        return None
    key, problem = read_credentials(request.headers.get("Authorization"))
    entry = ring.identify(key) if key is not None else None
    g.api_key = entry.name if entry else (ANONYMOUS if problem == MISSING else INVALID)
    request.environ[ENVIRON_KEY] = g.api_key
    if entry is None:
        return _refuse(401, problem or WRONG, {"WWW-Authenticate": _challenge(guard, problem)})
    wait = 0.0 if guard == "metrics" else ring.take(entry)
    if wait > 0:
        get_metrics().count_throttled(entry.name)
        seconds = max(1, math.ceil(wait))
        quota = entry.quota
        message = (
            f"the key '{entry.name}' is over its quota ({quota.rate:g} requests per second, "
            f"bursts of {quota.burst}): retry in {seconds} s"
        )
        return _refuse(429, message, {"Retry-After": str(seconds)})
    return None


def init_auth(app: Flask) -> None:
    """Guard ``app`` with the keys in ``IMAGECLF_API_KEYS`` (a key file's path or a loaded
    ``KeyRing``); without keys nothing is guarded, and asking to protect is an error."""
    config = app.config
    keys = config.get("IMAGECLF_API_KEYS")
    if not keys:
        if config["IMAGECLF_PROTECT_PAGE"] or config["IMAGECLF_PROTECT_METRICS"]:
            raise UserInputError("--protect-page and --protect-metrics need --api-keys FILE")
        return
    if not isinstance(keys, KeyRing):
        rate = config.get("IMAGECLF_KEY_RATE")
        keys = KeyRing.load(
            keys, parse_rate(str(rate)) if rate else None, config.get("IMAGECLF_KEY_BURST")
        )
        config["IMAGECLF_API_KEYS"] = keys
    ring = keys
    metrics = get_metrics(app)
    metrics.allow_keys([*ring.names, ANONYMOUS, INVALID])

    @app.before_request
    def authenticate() -> Response | None:
        return _authenticate(ring, config)

    if config["IMAGECLF_PROTECT_PAGE"]:

        @app.context_processor
        def hide_model() -> dict:
            """Without a key, no page (a 401, a 404) names the model in its footer."""
            if g.get("api_key") in (None, ANONYMOUS, INVALID):
                return {"model": None, "model_hidden": True}
            return {}

    @app.after_request
    def count(response: Response) -> Response:
        if "api_key" in g:
            metrics.observe_key(g.api_key, response.status_code)
        return response


# ---------------------------------------------------------------- the OpenAPI document
def _refusal(description: str, header: str, about: str) -> dict:
    return {
        "description": description,
        "headers": {header: {"description": about, "schema": {"type": "string"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def add_security(spec: dict, protect_metrics: bool) -> None:
    """Say in the OpenAPI document ``spec`` what a server with keys asks: the two ways to
    send a key, and the 401 and 429 of every guarded operation."""
    components = spec["components"]
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from the server's key file: Authorization: Bearer KEY.",
        },
        "basic": {
            "type": "http",
            "scheme": "basic",
            "description": "The same key as the password (any user name): what a browser's "
            "login prompt sends.",
        },
    }
    components["responses"]["Unauthorized"] = _refusal(
        "No key, a malformed Authorization header, or a key the server does not know.",
        "WWW-Authenticate",
        "The scheme to use (Bearer).",
    )
    components["responses"]["TooManyRequests"] = _refusal(
        "The key is over its quota (a token bucket per key, shared by every worker).",
        "Retry-After",
        "Whole seconds until the key may make a request again.",
    )
    spec["security"] = [{"bearer": []}, {"basic": []}]
    for path, item in spec["paths"].items():
        guarded = path.startswith("/api/") or (path == "/metrics" and protect_metrics)
        for operation in item.values():
            if not guarded:
                operation["security"] = []  # open: probes, and metrics unless protected
                continue
            responses = operation["responses"]
            responses["401"] = {"$ref": "#/components/responses/Unauthorized"}
            if path.startswith("/api/"):  # /metrics is never throttled
                responses["429"] = {"$ref": "#/components/responses/TooManyRequests"}


# ---------------------------------------------------------------- imageclf serve
# gunicorn's default access line, with the key's name (or anonymous/invalid, '-' for open
# routes) where the user would be: gunicorn would print a Basic user name as sent.
ACCESS_LOG_FORMAT = f'%(h)s %(l)s %({{{ENVIRON_KEY}}}e)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def server_settings(
    keys_file: str | os.PathLike | None,
    rate: str | None = None,
    burst: int | None = None,
    protect_page: bool = False,
    protect_metrics: bool = False,
) -> dict[str, Any]:
    """``create_app`` settings for ``imageclf serve``: the key file read and checked once,
    in the master, before any worker forks (a bad line is one error, exit 2)."""
    if keys_file is None:
        if protect_page or protect_metrics:
            raise UserInputError("--protect-page and --protect-metrics need --api-keys FILE")
        if rate is not None or burst is not None:
            raise UserInputError("--key-rate and --key-burst need --api-keys FILE")
        return {}
    ring = KeyRing.load(keys_file, parse_rate(rate) if rate else None, burst)
    log.info(
        "API keys: %d from %s; pages %s, metrics %s",
        len(ring.keys),
        printable(keys_file),
        "need a key" if protect_page else "open",
        "need a key" if protect_metrics else "open",
    )
    return {
        "IMAGECLF_API_KEYS": ring,
        "IMAGECLF_PROTECT_PAGE": protect_page,
        "IMAGECLF_PROTECT_METRICS": protect_metrics,
    }
