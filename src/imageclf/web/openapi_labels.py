"""The OpenAPI document's parts for multi-label models (``label_results.py``): the
request's ``threshold``, the answer per picture (its labels, not unsure/outside) and the
model's ``task``; ``openapi_schemas`` puts them in place."""

from __future__ import annotations


def probability() -> dict:
    return {"type": "number", "minimum": 0, "maximum": 1}


def threshold_option() -> dict:
    """``threshold`` in a predict request (multipart or JSON): a multi-label model's."""
    return {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "exclusiveMinimum": True,
        "exclusiveMaximum": True,
        "description": "Multi-label models: one threshold for every label instead of "
        "each label's own (chosen on validation data). A single-label model refuses it.",
    }


def label_thresholds_property() -> dict:
    return {
        "label_thresholds": {
            "type": "array",
            "nullable": True,
            "items": probability(),
            "description": "A multi-label model's threshold per label (classes' order).",
        }
    }


def labels_prediction() -> dict:
    """A multi-label model's answer for one picture: its labels, not unsure/outside."""
    label = {
        "type": "object",
        "required": ["label", "probability"],
        "properties": {"label": {"type": "string"}, "probability": probability()},
    }
    return {
        "type": "object",
        "required": ["filename", "task", "labels", "top"],
        "properties": {
            "filename": {"type": "string", "maxLength": 255},
            "task": {"type": "string", "enum": ["multi_label"]},
            "labels": {
                "type": "array",
                "description": "Every label whose calibrated probability is at or above its "
                "threshold, most likely first; empty when no label is.",
                "items": {
                    "type": "object",
                    "required": ["label", "probability", "threshold"],
                    "properties": {
                        "label": {"type": "string"},
                        "probability": probability(),
                        "threshold": probability(),
                    },
                },
            },
            "top": {
                "type": "array",
                "minItems": 1,
                "description": "The top_k labels by probability, on or not.",
                "items": label,
            },
            "explanation": {
                "type": "string",
                "format": "byte",
                "nullable": True,
                "description": "Grad-CAM overlay PNG (base64) for the most likely label.",
            },
        },
    }


def task_properties() -> dict:
    """What kind of answer the model gives (ModelBrief and ModelInfo)."""
    return {
        "task": {
            "type": "string",
            "enum": ["single_label", "multi_label"],
            "description": "single_label: one class per picture; multi_label: any number "
            "of labels, each at or above its own threshold.",
        },
    }
