"""The OpenAPI document's schemas: the bodies the API takes and gives, stated with the
app's configured limits (``openapi.py`` assembles the document around them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..imaging import WEB_FORMATS
from .openapi_labels import (
    label_thresholds_property,
    labels_prediction,
    task_properties,
    threshold_option,
)


def ref(schema: str) -> dict:
    return {"$ref": f"#/components/schemas/{schema}"}


@dataclass(frozen=True)
class Limits:
    """The app's configured limits, as the document states them."""

    max_files: int
    max_mb: int
    max_pixels: int
    max_explained: int
    request_pixels: int
    seconds: float
    formats: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Limits:
        return cls(
            max_files=int(config["IMAGECLF_MAX_FILES"]),
            max_mb=int(config["IMAGECLF_MAX_UPLOAD_BYTES"]) // (1024 * 1024),
            max_pixels=int(config["IMAGECLF_MAX_PIXELS"]),
            max_explained=int(config["IMAGECLF_MAX_EXPLAIN_FILES"]),
            request_pixels=int(config["IMAGECLF_MAX_REQUEST_PIXELS"]),
            seconds=float(config["IMAGECLF_DECODE_SECONDS"]),
            formats=", ".join(WEB_FORMATS),
        )


def _probability() -> dict:
    return {"type": "number", "minimum": 0, "maximum": 1}


def _confidence_properties() -> dict:
    """The confidence fields ModelBrief and ModelInfo both end with."""
    return {
        "calibrated": {
            "type": "boolean",
            "description": "Confidences were temperature-scaled on validation data.",
        },
        "unsure_below": {
            **_probability(),
            "description": "Which class? Top probabilities under this are reported as "
            "unsure (chosen on validation data).",
        },
        "familiar_above": {
            "type": "number",
            "nullable": True,
            "description": "One of its classes? A picture whose familiarity (logsumexp of "
            "the calibrated logits) is under this is reported as outside; set to flag "
            "familiar_flagged of the validation pictures. Null: the model predates the rule.",
        },
        "familiar_flagged": {
            **_probability(),
            "description": "The share of validation pictures the familiarity rule flags.",
        },
        "class_count": {"type": "integer", "description": "How many classes it knows."},
        "gate": {
            "type": "object",
            "nullable": True,
            "description": "The ImageNet gate (imageclf gate), null without one: the "
            "1,000-class network the model was fine-tuned from judges every photo of at "
            "least min_side px: its votes are multiplied into the probabilities, and a photo "
            "with less than outside_below of its probability on the model's classes is "
            "outside.",
            "properties": {
                "network": {"type": "string"},
                "side": {"type": "integer"},
                "min_side": {"type": "integer"},
                "outside_below": _probability(),
                "imagenet_classes": {"type": "integer"},
            },
        },
    }


def schemas(limits: Limits, top_k: dict, multi_label: bool = False) -> dict:
    """Every named schema of the document; ``multi_label``: the served model takes a
    ``threshold`` (a single-label model refuses one, so its document has none)."""
    return {
        "PredictRequest": _predict_request(limits, top_k, multi_label),
        "PredictJsonRequest": _predict_json_request(limits, top_k, multi_label),
        "PredictResponse": _predict_response(),
        "LabelsPrediction": labels_prediction(),
        **_model_schemas(),
        **_status_schemas(),
        **_feedback_schemas(limits),
    }


_ANSWER = {
    "answer": {
        "type": "string",
        "enum": ["right", "wrong", "none"],
        "description": "right: the model's answer is right; wrong: it is label; none: "
        "none of the model's classes.",
    },
    "label": {"type": "string", "description": "With answer=wrong: one of the classes."},
}


# One picture in a JSON body (json_body.image_from_json): the predict and feedback bodies.
JSON_IMAGE = {
    "type": "object",
    "required": ["data"],
    "additionalProperties": False,
    "properties": {
        "data": {"type": "string", "format": "byte", "minLength": 4},
        "filename": {"type": "string", "maxLength": 255},
    },
}


def _feedback_schemas(limits: Limits) -> dict:
    """``POST /api/v1/feedback`` (serve --feedback-dir): the picture again, the answer."""
    return {
        "FeedbackRequest": {
            "type": "object",
            "description": f"The picture (at most {limits.max_mb} MB) and the user's answer.",
            "required": ["file", "answer"],
            "properties": {"file": {"type": "string", "format": "binary"}, **_ANSWER},
        },
        "FeedbackJsonRequest": {
            "type": "object",
            "required": ["image", "answer"],
            "additionalProperties": False,
            "properties": {"image": JSON_IMAGE, **_ANSWER},
        },
        "FeedbackResponse": {
            "type": "object",
            "required": ["stored", "duplicate", "predicted", "confidence", "label"],
            "properties": {
                "stored": {
                    "type": "string",
                    "description": "Where the picture is kept, under the feedback folder.",
                },
                "duplicate": {
                    "type": "boolean",
                    "description": "The same picture was already kept with this answer.",
                },
                "predicted": {"type": "string", "description": "What the model says now."},
                "confidence": _probability(),
                "label": {
                    "type": "string",
                    "description": "The answer: a class, or 'none of these'.",
                },
                "model_version": {"type": "string"},
            },
        },
    }


def _predict_request(limits: Limits, top_k: dict, multi_label: bool) -> dict:
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
            **_predict_options(limits, top_k, multi_label),
        },
    }


def _predict_options(limits: Limits, top_k: dict, multi_label: bool) -> dict:
    """top_k and explain (and a multi-label model's threshold): the same in a multipart
    form and a JSON body."""
    fields = {
        "top_k": {**top_k, "description": "How many classes to return per image."},
        "explain": {
            "type": "boolean",
            "default": False,
            "description": "Add a Grad-CAM overlay (PNG, base64) per image; "
            f"for at most {limits.max_explained} images per request.",
        },
    }
    if multi_label:
        fields["threshold"] = threshold_option()
    return fields


def _predict_json_request(limits: Limits, top_k: dict, multi_label: bool) -> dict:
    """The same request as JSON, for clients that cannot send multipart."""
    return {
        "type": "object",
        "description": (
            "The pictures as base64 (or base64 data: URLs). The limits of a multipart "
            f"upload hold after decoding: {limits.max_mb} MB in all, at most "
            f"{limits.max_files} images; the body may be a third larger."
        ),
        "required": ["images"],
        "additionalProperties": False,
        "properties": {
            "images": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_files,
                "items": JSON_IMAGE,
            },
            **_predict_options(limits, top_k, multi_label),
        },
    }


def _predict_response() -> dict:
    prediction = {
        "type": "object",
        "required": ["filename", "top", "unsure", "outside"],
        "properties": {
            "filename": {"type": "string", "maxLength": 255},
            "unsure": {
                "type": "boolean",
                "description": "Which class? The top probability is under the model's "
                "unsure_below threshold (chosen on validation data): a hard picture.",
            },
            "outside": {
                "type": "boolean",
                "description": "One of its classes? For a photo and a model with an "
                "ImageNet gate: the gate puts under outside_below of its probability on the "
                "model's classes. Otherwise: no class responds to the picture as strongly "
                "as to nearly all of its validation pictures (familiar_above): probably "
                "something it has no class for. Never true for models that predate the rule.",
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
            "model": ref("ModelBrief"),
            "predictions": {
                "type": "array",
                # A single-label model's answer, or a multi-label model's (task: multi_label).
                "items": {"oneOf": [prediction, ref("LabelsPrediction")]},
            },
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
                "served_as": {"type": "string"},
                "version": {"type": "string"},
                **_confidence_properties(),
                **task_properties(),
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
                "version": {
                    "type": "string",
                    "description": "The model file's sha256 (first 16 hex digits); the "
                    "feedback log records it with every answer.",
                },
                "served_as": {"type": "string", "description": "serve --model NAME=PATH"},
                "default": {"type": "boolean"},
                "memory": ref("ModelMemory"),
                **_confidence_properties(),
                **task_properties(),
                **label_thresholds_property(),
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
