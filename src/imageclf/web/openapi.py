"""The OpenAPI 3.0 document for the JSON API, built from the app's real limits.

Written by hand as data (no framework generating it), and checked against the
running app by a fuzzing test, so the document and the behaviour cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..imaging import WEB_FORMATS
from ..version import __version__

_ERROR_REF = {"$ref": "#/components/responses/Error"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _ref(schema: str) -> dict:
    return {"$ref": f"#/components/schemas/{schema}"}


def _answer(description: str, schema: dict) -> dict:
    """One JSON response: its description and the schema of its body."""
    return {"description": description, "content": _json(schema)}


def _get(operation_id: str, summary: str, responses: dict) -> dict:
    return {"get": {"operationId": operation_id, "summary": summary, "responses": responses}}


@dataclass(frozen=True)
class _Limits:
    """The app's configured limits, as the document states them."""

    max_files: int
    max_mb: int
    max_pixels: int
    max_explained: int
    request_pixels: int
    seconds: float
    formats: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> _Limits:
        return cls(
            max_files=int(config["IMAGECLF_MAX_FILES"]),
            max_mb=int(config["IMAGECLF_MAX_UPLOAD_BYTES"]) // (1024 * 1024),
            max_pixels=int(config["IMAGECLF_MAX_PIXELS"]),
            max_explained=int(config["IMAGECLF_MAX_EXPLAIN_FILES"]),
            request_pixels=int(config["IMAGECLF_MAX_REQUEST_PIXELS"]),
            seconds=float(config["IMAGECLF_DECODE_SECONDS"]),
            formats=", ".join(WEB_FORMATS),
        )


def build_spec(config: Mapping[str, Any], classes: list[str] | None = None) -> dict:
    """The document; ``classes`` (once the model is loaded) bounds ``top_k`` exactly."""
    limits = _Limits.from_config(config)
    return {
        "openapi": "3.0.3",
        "info": _info(limits),
        "paths": {**_api_paths(_errors(limits)), **_ops_paths()},
        "components": {
            "schemas": _schemas(limits, _top_k(classes)),
            "responses": {"Error": _answer("An error, explained.", _ref("Error"))},
        },
    }


def _top_k(classes: list[str] | None) -> dict[str, Any]:
    top_k: dict[str, Any] = {"type": "integer", "minimum": 1, "default": 5}
    if classes:
        top_k["maximum"] = len(classes)
        top_k["default"] = min(5, len(classes))
    return top_k


def _info(limits: _Limits) -> dict:
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


def _errors(limits: _Limits) -> dict:
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
    predict = {
        "operationId": "predict",
        "summary": "Classify one image (file) or a batch (files).",
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": _ref("PredictRequest")}},
        },
        "responses": {
            "200": _answer("One prediction per image, in upload order.", _ref("PredictResponse")),
            **errors,
        },
    }
    return {
        "/api/v1/predict": {"post": predict},
        "/api/v1/model": _get(
            "model",
            "The served model: name, classes, input size, metrics.",
            {"200": _answer("Model description.", _ref("ModelInfo")), "503": errors["503"]},
        ),
        "/api/v1/openapi.json": _get(
            "openapi",
            "This document.",
            {"200": _answer("OpenAPI 3 document.", {"type": "object"})},
        ),
    }


def _ops_paths() -> dict:
    """The operations endpoints: liveness, readiness, Prometheus metrics."""
    return {
        "/healthz": _get(
            "healthz",
            "Liveness: always 200 while the process answers.",
            {"200": _answer("Alive.", _ref("Status"))},
        ),
        "/readyz": _get(
            "readyz",
            "Readiness: 200 once the model is loaded, else 503.",
            {
                "200": _answer("Ready to classify.", _ref("Status")),
                "503": _answer("Loading, or loading failed.", _ref("Status")),
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


def _probability() -> dict:
    return {"type": "number", "minimum": 0, "maximum": 1}


def _confidence_properties() -> dict:
    """The two confidence fields ModelBrief and ModelInfo both end with."""
    return {
        "calibrated": {
            "type": "boolean",
            "description": "Confidences were temperature-scaled on validation data.",
        },
        "unsure_below": {
            **_probability(),
            "description": "Top probabilities under this are reported as unsure.",
        },
    }


def _schemas(limits: _Limits, top_k: dict) -> dict:
    return {
        "PredictRequest": _predict_request(limits, top_k),
        "PredictResponse": _predict_response(),
        **_model_schemas(),
        **_status_schemas(),
    }


def _predict_request(limits: _Limits, top_k: dict) -> dict:
    return {
        "type": "object",
        "description": (
            f"Send one image in file, several in files, or both: at most {limits.max_files} "
            "images in all."
        ),
        # "file plus files together" cannot be said in OpenAPI 3.0 (no if/then):
        # the description states it and the API answers 400 beyond it.
        "anyOf": [{"required": ["file"]}, {"required": ["files"]}],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "One image."},
            "files": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "minItems": 1,
                "maxItems": limits.max_files,
                "description": "Several images, classified in one batch.",
            },
            "top_k": {**top_k, "description": "How many classes to return per image."},
            "explain": {
                "type": "boolean",
                "default": False,
                "description": "Add a Grad-CAM overlay (PNG, base64) per image; "
                f"for at most {limits.max_explained} images per request.",
            },
        },
    }


def _predict_response() -> dict:
    prediction = {
        "type": "object",
        "required": ["filename", "top", "unsure"],
        "properties": {
            "filename": {"type": "string", "maxLength": 255},
            "unsure": {
                "type": "boolean",
                "description": "The top probability is under the model's "
                "unsure_below threshold (chosen on validation data): the "
                "picture is probably none of the classes, or hard for it.",
            },
            "top": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["label", "probability"],
                    "properties": {"label": {"type": "string"}, "probability": _probability()},
                },
            },
            "explanation": {
                "type": "string",
                "format": "byte",
                "nullable": True,
                "description": "Grad-CAM overlay PNG (base64), when "
                "explain was true; null for an ONNX model (no gradients).",
            },
        },
    }
    return {
        "type": "object",
        "required": ["model", "predictions", "elapsed_ms"],
        "properties": {
            "model": _ref("ModelBrief"),
            "predictions": {"type": "array", "items": prediction},
            "elapsed_ms": {"type": "number", "minimum": 0},
        },
    }


def _model_schemas() -> dict:
    """ModelBrief (in every prediction response) and ModelInfo (/api/v1/model)."""
    return {
        "ModelBrief": {
            "type": "object",
            "required": ["name", "input_size"],
            "properties": {
                "name": {"type": "string"},
                "architecture": {"type": "string", "nullable": True},
                "input_size": {"type": "integer"},
                "test_accuracy": {**_probability(), "nullable": True},
                **_confidence_properties(),
            },
        },
        "ModelInfo": {
            "type": "object",
            "required": ["name", "classes", "input_size", "metrics", "explain"],
            "properties": {
                "name": {"type": "string"},
                "architecture": {"type": "string", "nullable": True},
                "classes": {"type": "array", "items": {"type": "string"}},
                "input_size": {"type": "integer"},
                "normalization": {"type": "object", "nullable": True},
                "metrics": {"type": "object"},
                "test_accuracy": {**_probability(), "nullable": True},
                "created": {"type": "string", "nullable": True},
                "explain": {"type": "boolean", "description": "Grad-CAM available."},
                "backend": {
                    "type": "string",
                    "enum": ["pytorch", "onnxruntime"],
                    "description": "What runs the model (Grad-CAM needs pytorch).",
                },
                "temperature": {
                    "type": "number",
                    "description": "Logits are divided by this before the softmax.",
                },
                **_confidence_properties(),
            },
        },
    }


def _status_schemas() -> dict:
    """Status (/healthz, /readyz) and Error (every 4xx/5xx body)."""
    return {
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "ready", "loading", "failed"]},
                "model": {"type": "string"},
                "error": {"type": "string"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["status", "title", "message", "request_id"],
                    "properties": {
                        "status": {"type": "integer"},
                        "title": {"type": "string"},
                        "message": {"type": "string"},
                        "request_id": {
                            "type": "string",
                            "description": "Also in the X-Request-ID header and the "
                            "server log: quote it when reporting a problem.",
                        },
                    },
                }
            },
        },
    }
