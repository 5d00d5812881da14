"""The OpenAPI 3.0 document for the JSON API, built from the app's real limits.

Written by hand as data (no framework generating it), and checked against the
running app by a fuzzing test, so the document and the behaviour cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import __version__
from ..imaging import WEB_FORMATS

_ERROR_REF = {"$ref": "#/components/responses/Error"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def build_spec(config: Mapping[str, Any], classes: list[str] | None = None) -> dict:
    """The document; ``classes`` (once the model is loaded) bounds ``top_k`` exactly."""
    max_files = int(config["IMAGECLF_MAX_FILES"])
    max_mb = int(config["IMAGECLF_MAX_UPLOAD_BYTES"]) // (1024 * 1024)
    top_k: dict[str, Any] = {"type": "integer", "minimum": 1, "default": 5}
    if classes:
        top_k["maximum"] = len(classes)
        top_k["default"] = min(5, len(classes))
    formats = ", ".join(WEB_FORMATS)

    def error(description: str) -> dict:
        return {"description": description, **_ERROR_REF}

    max_pixels = int(config["IMAGECLF_MAX_PIXELS"])
    max_explained = int(config["IMAGECLF_MAX_EXPLAIN_FILES"])
    request_pixels = int(config["IMAGECLF_MAX_REQUEST_PIXELS"])
    seconds = float(config["IMAGECLF_DECODE_SECONDS"])
    errors = {
        "400": error("No file, an undecodable image, too many files, or a bad parameter."),
        "408": error("The request body took too long to arrive."),
        "413": error(
            f"Body over the limit ({max_mb} MB per request), too many form parts, or over "
            f"the request's decode budget ({request_pixels:,} pixels in all images "
            f"together, {seconds:g} s of decoding)."
        ),
        "415": error(f"A real file in a format outside the allowlist ({formats})."),
        "422": error(
            f"One image over a limit read from its header: {max_pixels:,} pixels, the "
            "aspect ratio, or the JPEG scan count."
        ),
        "503": error("The model is still loading."),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "imageclf",
            "version": __version__,
            "description": (
                f"Classify images with a CNN. Accepted formats: {formats}; at most "
                f"{max_mb} MB per request and {max_files} images per request (file and "
                "files together). Uploads are "
                "kept in memory only. A batch is all-or-nothing: the first bad image "
                "fails the request, and the message names it."
            ),
        },
        "paths": {
            "/api/v1/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Classify one image (file) or a batch (files).",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {"$ref": "#/components/schemas/PredictRequest"},
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One prediction per image, in upload order.",
                            "content": _json({"$ref": "#/components/schemas/PredictResponse"}),
                        },
                        **errors,
                    },
                }
            },
            "/api/v1/model": {
                "get": {
                    "operationId": "model",
                    "summary": "The served model: name, classes, input size, metrics.",
                    "responses": {
                        "200": {
                            "description": "Model description.",
                            "content": _json({"$ref": "#/components/schemas/ModelInfo"}),
                        },
                        "503": errors["503"],
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3 document.",
                            "content": _json({"type": "object"}),
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: always 200 while the process answers.",
                    "responses": {
                        "200": {
                            "description": "Alive.",
                            "content": _json({"$ref": "#/components/schemas/Status"}),
                        }
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: 200 once the model is loaded, else 503.",
                    "responses": {
                        "200": {
                            "description": "Ready to classify.",
                            "content": _json({"$ref": "#/components/schemas/Status"}),
                        },
                        "503": {
                            "description": "Loading, or loading failed.",
                            "content": _json({"$ref": "#/components/schemas/Status"}),
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (text exposition format 0.0.4).",
                    "responses": {
                        "200": {
                            "description": "Metrics.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(max_files, top_k, max_explained),
            "responses": {
                "Error": {
                    "description": "An error, explained.",
                    "content": _json({"$ref": "#/components/schemas/Error"}),
                }
            },
        },
    }


def _schemas(max_files: int, top_k: dict, max_explained: int) -> dict:
    probability = {"type": "number", "minimum": 0, "maximum": 1}
    return {
        "PredictRequest": {
            "type": "object",
            "description": (
                f"Send one image in file, several in files, or both: at most {max_files} "
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
                    "maxItems": max_files,
                    "description": "Several images, classified in one batch.",
                },
                "top_k": {**top_k, "description": "How many classes to return per image."},
                "explain": {
                    "type": "boolean",
                    "default": False,
                    "description": "Add a Grad-CAM overlay (PNG, base64) per image; "
                    f"for at most {max_explained} images per request.",
                },
            },
        },
        "PredictResponse": {
            "type": "object",
            "required": ["model", "predictions", "elapsed_ms"],
            "properties": {
                "model": {"$ref": "#/components/schemas/ModelBrief"},
                "predictions": {
                    "type": "array",
                    "items": {
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
                                    "properties": {
                                        "label": {"type": "string"},
                                        "probability": probability,
                                    },
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
                    },
                },
                "elapsed_ms": {"type": "number", "minimum": 0},
            },
        },
        "ModelBrief": {
            "type": "object",
            "required": ["name", "input_size"],
            "properties": {
                "name": {"type": "string"},
                "architecture": {"type": "string", "nullable": True},
                "input_size": {"type": "integer"},
                "test_accuracy": {**probability, "nullable": True},
                "calibrated": {
                    "type": "boolean",
                    "description": "Confidences were temperature-scaled on validation data.",
                },
                "unsure_below": {
                    **probability,
                    "description": "Top probabilities under this are reported as unsure.",
                },
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
                "test_accuracy": {**probability, "nullable": True},
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
                "calibrated": {
                    "type": "boolean",
                    "description": "Confidences were temperature-scaled on validation data.",
                },
                "unsure_below": {
                    **probability,
                    "description": "Top probabilities under this are reported as unsure.",
                },
            },
        },
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
