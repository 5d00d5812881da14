"""The OpenAPI 3.0 document for the JSON API, built from the app's real limits.

Written by hand as data (no framework generating it), and checked against the
running app by a fuzzing test, so the document and the behaviour cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..version import __version__
from .auth import add_security
from .openapi_models import model_paths, model_schemas
from .openapi_schemas import Limits, ref, schemas

_ERROR_REF = {"$ref": "#/components/responses/Error"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _answer(description: str, schema: dict) -> dict:
    """One JSON response: its description and the schema of its body."""
    return {"description": description, "content": _json(schema)}


def _get(operation_id: str, summary: str, responses: dict) -> dict:
    return {"get": {"operationId": operation_id, "summary": summary, "responses": responses}}


def build_spec(
    config: Mapping[str, Any],
    classes: list[str] | None = None,
    models: list[str] | None = None,
    *,
    multi_label: bool = False,
) -> dict:
    """The document; ``classes`` (once the model is loaded) bounds ``top_k`` exactly;
    ``models``: the served names (``serve --model NAME=PATH``), the path parameter's;
    ``multi_label``: the (default) model takes a ``threshold``."""
    limits = Limits.from_config(config)
    errors = _errors(limits)
    spec = {
        "openapi": "3.0.3",
        "info": _info(limits),
        "paths": {
            **_api_paths(errors),
            **model_paths(errors, models, predict_operation),
            **_ops_paths(),
        },
        "components": {
            "schemas": {**schemas(limits, _top_k(classes), multi_label), **model_schemas()},
            "responses": {"Error": _answer("An error, explained.", ref("Error"))},
        },
    }
    if config.get("IMAGECLF_FEEDBACK_DIR"):  # serve --feedback-dir (web/feedback.py)
        spec["paths"]["/api/v1/feedback"] = {"post": _feedback(_errors(limits))}
    if config.get("IMAGECLF_API_KEYS"):  # the server asks for keys (web/auth.py)
        add_security(spec, bool(config.get("IMAGECLF_PROTECT_METRICS")))
    return spec


def _top_k(classes: list[str] | None) -> dict[str, Any]:
    top_k: dict[str, Any] = {"type": "integer", "minimum": 1, "default": 5}
    if classes:
        top_k["maximum"] = len(classes)
        top_k["default"] = min(5, len(classes))
    return top_k


def _info(limits: Limits) -> dict:
    return {
        "title": "imageclf",
        "version": __version__,
        "description": (
            f"Classify images with a CNN. Accepted formats: {limits.formats}; at most "
            f"{limits.max_mb} MB per request and {limits.max_files} images per request "
            "(file and files together). Uploads are "
            "kept in memory only. A batch is all-or-nothing: the first bad image "
            "fails the request, and the message names it."
        ),
    }


def _errors(limits: Limits) -> dict:
    """The error responses of the predict endpoint, each naming the limit behind it."""

    def error(description: str) -> dict:
        return {"description": description, **_ERROR_REF}

    return {
        "400": error("No file, an undecodable image, too many files, or a bad parameter."),
        "408": error("The request body took too long to arrive."),
        "413": error(
            f"Body over the limit ({limits.max_mb} MB per request), too many form parts, "
            f"or over the request's decode budget ({limits.request_pixels:,} pixels in all "
            f"images together, {limits.seconds:g} s of decoding)."
        ),
        "415": error(f"A real file in a format outside the allowlist ({limits.formats})."),
        "422": error(
            f"One image over a limit read from its header: {limits.max_pixels:,} pixels, "
            "the aspect ratio, or the JPEG scan count."
        ),
        "503": error("The model is still loading."),
    }


def _api_paths(errors: dict) -> dict:
    """The /api/v1 endpoints: predict, the model's description, this document."""
    return {
        "/api/v1/predict": {"post": predict_operation("predict", errors)},
        "/api/v1/model": _get(
            "model",
            "The served (default) model: name, classes, input size, metrics, version.",
            {"200": _answer("Model description.", ref("ModelInfo")), "503": errors["503"]},
        ),
        "/api/v1/openapi.json": _get(
            "openapi",
            "This document.",
            {"200": _answer("OpenAPI 3 document.", {"type": "object"})},
        ),
    }


def predict_operation(operation_id: str, errors: dict, **extra: Any) -> dict:
    """The predict operation (the default model's, or a named one's with ``extra``)."""
    return {
        "operationId": operation_id,
        "summary": "Classify one image (file) or a batch (files), or base64 images in JSON.",
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": ref("PredictRequest")},
                "application/json": {"schema": ref("PredictJsonRequest")},
            },
        },
        "responses": {
            "200": {
                **_answer("One prediction per image, in upload order.", ref("PredictResponse")),
                "headers": MODEL_HEADERS,
            },
            **errors,
        },
        **extra,
    }


# Every answer from a model names it (web/api.py): which served name, which version.
MODEL_HEADERS = {
    "X-Model-Name": {
        "description": "The served name of the model that answered.",
        "schema": {"type": "string"},
    },
    "X-Model-Version": {
        "description": "Its version: the model file's sha256, first 16 hex digits.",
        "schema": {"type": "string"},
    },
}


def _feedback(errors: dict) -> dict:
    """The answer endpoint: the picture again (classified anew), right/wrong/none."""
    error = errors["400"] | {"description": "A bad answer or label, or a bad picture."}
    return {
        "operationId": "feedback",
        "summary": "Say whether the model was right about a picture; it is kept as training data.",
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": ref("FeedbackRequest")},
                "application/json": {"schema": ref("FeedbackJsonRequest")},
            },
        },
        "responses": {
            "200": _answer("Kept (or already kept).", ref("FeedbackResponse")),
            **errors,
            "400": error,
            "429": {
                "description": "This address sent answers too fast (Retry-After).",
                **_ERROR_REF,
            },
            "507": {"description": "The feedback folder is at its disk quota.", **_ERROR_REF},
        },
    }


def _ops_paths() -> dict:
    """The operations endpoints: liveness, readiness, Prometheus metrics."""
    return {
        "/healthz": _get(
            "healthz",
            "Liveness: always 200 while the process answers.",
            {"200": _answer("Alive.", ref("Status"))},
        ),
        "/readyz": _get(
            "readyz",
            "Readiness: 200 once the model is loaded, else 503.",
            {
                "200": _answer("Ready to classify.", ref("Status")),
                "503": _answer("Loading, or loading failed.", ref("Status")),
            },
        ),
        "/metrics": _get(
            "metrics",
            "Prometheus metrics (text exposition format 0.0.4).",
            {
                "200": {
                    "description": "Metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
    }
