"""A multi-label model's answers in the web app (``prediction/labels.py``'s rule): the
threshold a request asks for, the API's answer per picture, the page's rows.

A multi-label model gives every label at or above its threshold, perhaps several, perhaps
none; "unsure" and "outside" belong to single-label models and are not said. A request's
``threshold`` (form field, query string or JSON body) replaces every label's own; without
one, ``serve --threshold`` (``IMAGECLF_THRESHOLD``) does, else the bundle's thresholds.
"""

from __future__ import annotations

import math
import re

from flask import current_app
from werkzeug.exceptions import BadRequest

from ..prediction.labels import check_threshold
from ..prediction.predictor import Predictor
from .service import Prediction

_NUMBER = re.compile(r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?")
THRESHOLD_MESSAGE = "threshold must be a number between 0 and 1 (exclusive)"


def parse_threshold(raw: object) -> float | None:
    """A request's ``threshold`` (text from a form, or a JSON number), or a 400."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if not _NUMBER.fullmatch(raw.strip()):
            raise BadRequest(THRESHOLD_MESSAGE)
        raw = float(raw)
    if type(raw) not in (int, float) or not math.isfinite(raw) or not 0 < raw < 1:
        raise BadRequest(THRESHOLD_MESSAGE)
    return float(raw)


def threshold_for(predictor: Predictor, requested: float | None) -> float | None:
    """The threshold that applies: the request's (refused by a single-label model, 400),
    else the server's default for a multi-label model (``serve --threshold``)."""
    if requested is not None:
        predictor.label_thresholds(requested)  # UserInputError (400) if single-label
        return requested
    default = current_app.config.get("IMAGECLF_THRESHOLD")
    return check_threshold(default) if predictor.multi_label and default is not None else None


def api_item(result: Prediction, base: dict) -> dict:
    """The API's answer for one picture: ``base`` (filename, top, unsure, outside) as it
    is for a single-label model; a multi-label one answers its labels instead."""
    if result.labels is None:
        return base
    return {
        "filename": base["filename"],
        "task": "multi_label",
        "labels": [
            {"label": label, "probability": p, "threshold": t} for label, p, t in result.labels
        ],
        "top": base["top"],
    }
