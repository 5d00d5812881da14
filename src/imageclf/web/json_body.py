"""Pictures in a JSON body, for clients that cannot send multipart (some HTTP libraries,
serverless functions, low-code tools): ``{"images": [{"data": "<base64>", "filename":
"cat.jpg"}], "top_k": 3, "explain": false}``, and ``"threshold": 0.5`` for a
multi-label model.

The same limits as a multipart upload hold after decoding (bytes per picture and in
all, pictures per request); the body may be a third larger, which is what base64
costs. JSON is parsed by ``fileio.parse_json`` (no NaN, bounded nesting) and base64
strictly (``validate=True``): anything else is a 400 naming the field.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass

from flask import Request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from ..errors import UserInputError
from ..fileio import parse_json
from .uploads import FORM_OVERHEAD_BYTES, MB, Upload, clean_filename

_FIELDS = {"images", "top_k", "explain", "threshold"}
_IMAGE_FIELDS = {"data", "filename"}


@dataclass
class JsonPredictRequest:
    uploads: list[Upload]
    top_k: int | None
    explain: bool
    threshold: float | None = None  # a number; its range is label_results.parse_threshold's


def is_json(request: Request) -> bool:
    return request.mimetype == "application/json"


def json_body_limit(max_upload_bytes: int) -> int:
    """The largest JSON body: the multipart limit in base64, plus room for the rest."""
    return 4 * math.ceil(max_upload_bytes / 3) + FORM_OVERHEAD_BYTES


def read_json_predict(request: Request, *, max_bytes: int, max_files: int) -> JsonPredictRequest:
    """The pictures and options of a JSON predict request, or a 400/413 saying why not."""
    request.max_content_length = json_body_limit(max_bytes)
    try:
        raw = request.get_data(cache=False)  # 413 past the limit, before anything is parsed
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(
            f"the JSON body is too large: images may be at most {max_bytes // MB} MB in all "
            "(about a third more as base64)"
        ) from None
    try:
        body = parse_json(raw.decode("utf-8"), what="the JSON body")
    except UnicodeDecodeError:
        raise BadRequest("the JSON body is not UTF-8") from None
    except UserInputError as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(body, dict):
        raise BadRequest('the JSON body must be an object like {"images": [...]}')
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown field {unknown[0]!r}: the body takes images, top_k, explain, threshold"
        )
    images = body.get("images")
    if not isinstance(images, list) or not images:
        raise BadRequest('"images" must be a non-empty list of {"data": "<base64>"} objects')
    if len(images) > max_files:
        raise BadRequest(f"too many images: at most {max_files} per request")
    uploads, total = [], 0
    for index, item in enumerate(images):
        upload = image_from_json(item, index, max_bytes)
        total += len(upload.data)
        if total > max_bytes:
            raise RequestEntityTooLarge(
                f"the images are larger than {max_bytes // MB} MB in all (after base64)"
            )
        uploads.append(upload)
    return JsonPredictRequest(
        uploads,
        _top_k(body.get("top_k")),
        _explain(body.get("explain")),
        _threshold(body.get("threshold")),
    )


def image_from_json(item: object, index: int, max_bytes: int) -> Upload:
    """One ``{"data": base64, "filename": ...}`` object (``images[index]``) as an upload."""
    where = f"images[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("data"), str):
        raise BadRequest(f'{where} must be an object with "data": a base64 string')
    unknown = sorted(set(item) - _IMAGE_FIELDS)
    if unknown:
        raise BadRequest(f"{where} has an unknown field {unknown[0]!r}: it takes data, filename")
    filename = item.get("filename", "")
    if not isinstance(filename, str):
        raise BadRequest(f"{where}.filename must be a string")
    text = item["data"]
    if text.startswith("data:"):  # a data: URL, as browsers make them
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise BadRequest(f"{where}.data is a data: URL that is not base64")
    if len(text) > json_body_limit(max_bytes):
        raise RequestEntityTooLarge(f"{where} is larger than the {max_bytes // MB} MB limit")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}.data is not valid base64") from None
    if not data:
        raise BadRequest(f"{where}.data is empty")
    if len(data) > max_bytes:
        raise RequestEntityTooLarge(f"{where} is larger than the {max_bytes // MB} MB limit")
    return Upload(clean_filename(filename), data)


def _top_k(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise BadRequest("top_k must be a whole number")
    return value


def _threshold(value: object) -> float | None:
    if value is not None and type(value) not in (int, float):
        raise BadRequest("threshold must be a number between 0 and 1 (exclusive)")
    return value


def _explain(value: object) -> bool:
    if value is None:
        return False
    if type(value) is not bool:
        raise BadRequest("explain must be true or false")
    return value
