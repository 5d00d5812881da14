"""The JSON API, version 1: ``POST /api/v1/predict``, ``GET /api/v1/model``, the spec;
several models: ``GET /api/v1/models``, ``POST /api/v1/models/NAME/predict`` and
``POST /api/v1/models/NAME/reload``. Every answer from a model names its served name
and version in the body and in ``X-Model-Name`` / ``X-Model-Version`` headers."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, Forbidden

from .extensions import get_metrics, get_service
from .feedback import read_api_answer, record
from .json_body import is_json, read_json_predict
from .label_results import api_item, parse_threshold, threshold_for
from .models import Loaded
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
        "gate": info["gate"],
        "task": info["task"],
        "served_as": info["served_as"],
        "version": info["version"],
    }


def _named(response: Response, loaded: Loaded) -> Response:
    """The headers that say which model and version answered."""
    response.headers["X-Model-Name"] = loaded.name
    response.headers["X-Model-Version"] = loaded.version
    return response


@bp.post("/predict")
def predict() -> Response:
    """Classify one image (``file``) or a batch (``files``) in one forward pass; or the
    pictures of a JSON body (``images``, base64: ``json_body.py``). The default model."""
    return _predict(None)


@bp.post("/models/<name>/predict")
def predict_with(name: str) -> Response:
    """``/api/v1/predict`` with the model served as ``name`` (404 if none)."""
    return _predict(name)


def _predict(name: str | None) -> Response:
    started = time.perf_counter()
    service = get_service()
    # Taken once: a reload meanwhile leaves this request on the version it started with.
    loaded = service.current(name, float(current_app.config["IMAGECLF_MODEL_WAIT_S"]))
    predictor = loaded.predictor
    max_files = int(current_app.config["IMAGECLF_MAX_FILES"])
    max_bytes = int(current_app.config["IMAGECLF_MAX_UPLOAD_BYTES"])
    if is_json(request):
        body = read_json_predict(request, max_bytes=max_bytes, max_files=max_files)
        raw_top_k = None if body.top_k is None else str(body.top_k)
        explain, uploads, raw_threshold = body.explain, body.uploads, body.threshold
    else:
        raw_top_k = form_value(request, "top_k")
        raw_threshold = form_value(request, "threshold")
        explain = parse_bool(form_value(request, "explain"), "explain")
        uploads = collect_uploads(
            request, {"file": 1, "files": max_files}, max_bytes=max_bytes, max_files=max_files
        )
    top_k = parse_top_k(raw_top_k, default=DEFAULT_TOP_K, maximum=len(predictor.classes))
    threshold = threshold_for(predictor, parse_threshold(raw_threshold))  # multi-label only
    max_explained = int(current_app.config["IMAGECLF_MAX_EXPLAIN_FILES"])
    if explain and len(uploads) > max_explained:
        # Grad-CAM costs a backward pass and a drawing per image: bound it like decoding.
        raise BadRequest(
            f"explain=true works for at most {max_explained} images per request; "
            f"this one has {len(uploads)}"
        )
    results = service.classify(
        uploads,
        top_k=top_k,
        explain=explain,
        client=request.remote_addr or "local",
        model=loaded,
        threshold=threshold,
    )
    get_metrics().count_predictions([r.top[0][0] for r in results])

    predictions = []
    for result in results:
        base = {
            "filename": result.filename,
            "top": [{"label": label, "probability": p} for label, p in result.top],
            # Which class? The top answer's confidence is under the model's validated
            # threshold: a hard picture.
            "unsure": result.unsure,
            # One of its classes? No class responds as strongly as to its own pictures.
            "outside": result.outside,
        }
        item = api_item(result, base)  # a multi-label model: its labels instead of doubts
        if explain:  # null where the model cannot explain (an ONNX export)
            drawn = result.explanation
            item["explanation"] = png_base64(drawn) if drawn is not None else None
        predictions.append(item)
    answer = jsonify(
        {
            "model": _model_brief(service.describe(loaded)),
            "predictions": predictions,
            "elapsed_ms": round((time.perf_counter() - started) * 1000.0, 3),
        }
    )
    return _named(answer, loaded)


@bp.post("/feedback")
def feedback() -> Response:
    """The user's answer about one picture, kept as training data (``serve
    --feedback-dir``): the picture again, ``answer`` right/wrong/none, ``label``."""
    upload, answer, label = read_api_answer()
    return jsonify(record(upload, answer, label, None))


@bp.get("/model")
def model() -> Response:
    """What the server runs (the default model): name, classes, input size, metrics."""
    loaded = get_service().current()
    return _named(jsonify(get_service().describe(loaded)), loaded)


@bp.get("/models")
def models() -> Response:
    """Every served model: the default first, each with its version and memory cost."""
    service = get_service()
    return jsonify({"default": service.default_name, "models": service.describe_all()})


@bp.post("/models/<name>/reload")
def reload(name: str) -> Response:
    """Check the model's file now: a new version that passes replaces the old one; one
    that fails leaves the old serving (409, the reason). With API keys any valid key may
    ask; without, ``IMAGECLF_ALLOW_RELOAD`` decides (default: this machine only)."""
    service = get_service()
    service.slot(name)  # 404 before anything else
    _check_reload_allowed()
    result = service.reload(name)
    answer = jsonify(result.as_dict())
    if result.outcome in ("failed", "refused"):
        answer.status_code = 409
    return _named(answer, service.current(name))


LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def _check_reload_allowed() -> None:
    config = current_app.config
    if config.get("IMAGECLF_API_KEYS"):
        return  # web/auth.py let only a valid key through
    rule = config["IMAGECLF_ALLOW_RELOAD"]
    direct = not int(config["IMAGECLF_PROXY_HOPS"])
    if rule == "any" or (rule == "loopback" and direct and request.remote_addr in LOOPBACK):
        return
    raise Forbidden(
        "reloading a model needs an API key (serve --api-keys), or a request from this "
        "machine (serve --allow-reload loopback, the default, with no proxy hops)"
    )


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 document for this server (limits and classes filled in)."""
    service = get_service()
    classes = service.predictor().classes if service.ready else None
    # threshold is documented when any served model takes it (every predict route
    # shares the request schemas; a single-label model answers it with a 400)
    multi_label = service.ready and any(
        slot.current is not None and slot.current.predictor.multi_label
        for slot in service.slots.values()
    )
    return jsonify(
        build_spec(current_app.config, classes, list(service.slots), multi_label=multi_label)
    )
