"""The JSON API, version 1: ``POST /api/v1/predict``, ``GET /api/v1/model``, the spec."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest

from .extensions import get_metrics, get_service
from .feedback import read_api_answer, record
from .json_body import is_json, read_json_predict
from .openapi import build_spec
from .pictures import png_base64
from .uploads import collect_uploads, form_value, parse_bool, parse_top_k

bp = Blueprint("api", __name__, url_prefix="/api/v1")

DEFAULT_TOP_K = 5


class StrictJSONProvider(DefaultJSONProvider):
    """Every answer is JSON: a NaN or infinity raises (and the error handler answers a 500
    that is itself valid JSON) instead of going out as bare ``NaN``, which clients'
    parsers reject. Models and metadata that could make one are refused at load."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


def _model_brief(info: dict) -> dict:
    return {
        "name": info["name"],
        "architecture": info["architecture"],
        "input_size": info["input_size"],
        "test_accuracy": info["test_accuracy"],
        "calibrated": info["calibrated"],
        "unsure_below": info["unsure_below"],
        "familiar_above": info["familiar_above"],
        "familiar_flagged": info["familiar_flagged"],
        "class_count": info["class_count"],
    }


@bp.post("/predict")
def predict() -> Response:
    """Classify one image (``file``) or a batch (``files``) in one forward pass; or the
    pictures of a JSON body (``images``, base64: ``json_body.py``)."""
    started = time.perf_counter()
    service = get_service()
    predictor = service.predictor(float(current_app.config["IMAGECLF_MODEL_WAIT_S"]))
    max_files = int(current_app.config["IMAGECLF_MAX_FILES"])
    max_bytes = int(current_app.config["IMAGECLF_MAX_UPLOAD_BYTES"])
    if is_json(request):
        body = read_json_predict(request, max_bytes=max_bytes, max_files=max_files)
        raw_top_k = None if body.top_k is None else str(body.top_k)
        explain, uploads = body.explain, body.uploads
    else:
        raw_top_k = form_value(request, "top_k")
        explain = parse_bool(form_value(request, "explain"), "explain")
        uploads = collect_uploads(
            request, {"file": 1, "files": max_files}, max_bytes=max_bytes, max_files=max_files
        )
    top_k = parse_top_k(raw_top_k, default=DEFAULT_TOP_K, maximum=len(predictor.classes))
    max_explained = int(current_app.config["IMAGECLF_MAX_EXPLAIN_FILES"])
    if explain and len(uploads) > max_explained:
        # Grad-CAM costs a backward pass and a drawing per image: bound it like decoding.
        raise BadRequest(
            f"explain=true works for at most {max_explained} images per request; "
            f"this one has {len(uploads)}"
        )
    results = service.classify(
        uploads, top_k=top_k, explain=explain, client=request.remote_addr or "local"
    )
    get_metrics().count_predictions([r.top[0][0] for r in results])

    predictions = []
    for result in results:
        item: dict = {
            "filename": result.filename,
            "top": [{"label": label, "probability": p} for label, p in result.top],
            # Which class? The top answer's confidence is under the model's validated
            # threshold: a hard picture.
            "unsure": result.unsure,
            # One of its classes? No class responds as strongly as to its own pictures.
            "outside": result.outside,
        }
        if explain:  # null where the model cannot explain (an ONNX export)
            drawn = result.explanation
            item["explanation"] = png_base64(drawn) if drawn is not None else None
        predictions.append(item)
    return jsonify(
        {
            "model": _model_brief(service.describe(predictor)),
            "predictions": predictions,
            "elapsed_ms": round((time.perf_counter() - started) * 1000.0, 3),
        }
    )


@bp.post("/feedback")
def feedback() -> Response:
    """The user's answer about one picture, kept as training data (``serve
    --feedback-dir``): the picture again, ``answer`` right/wrong/none, ``label``."""
    upload, answer, label = read_api_answer()
    return jsonify(record(upload, answer, label, None))


@bp.get("/model")
def model() -> Response:
    """What the server runs: name, classes, input size and the bundle's metrics."""
    return jsonify(get_service().describe())


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 document for this server (limits and classes filled in)."""
    service = get_service()
    classes = service.predictor().classes if service.ready else None
    return jsonify(build_spec(current_app.config, classes))
