"""Feedback into the training set: "right" or "wrong, it is X" kept as training data.

Off unless ``serve --feedback-dir DIR``. Each answer stores the picture under
``DIR/<class>/`` (the folder layout ``imageclf train --data`` reads) and one line in
``DIR/feedback.csv``; "none of these" pictures go to ``DIR/.none/``, which training
ignores (hidden), so they never become a class by accident.

Why the server classifies the picture again instead of trusting what the client says
the model answered: the "predicted" column then is always the server's own word, and
no secret or signed token is needed (a token would prove the prediction but not the
correction, which only the user can give). The page already holds the picture the
server re-encoded (its PNG data URL), so it posts that back (no second upload of the
original, and nothing is stored before the user answers); an API client sends its
picture again. The forward pass this costs is small and within the same decoding
share as a prediction.

Writes: our own PNG encoding of the decoded picture (no EXIF, ICC or text chunks),
longest side <= ``MAX_SIDE``; the file name is the content's hash (never the
client's), created with ``os.link`` from a staging file (atomic, never overwriting:
the same picture with the same answer is kept once). A disk quota (507 when full)
and a per-client rate (429) bound what clients can make the server keep.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import hashlib
import io
import math
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, current_app, g, request
from PIL import Image
from werkzeug.exceptions import BadRequest

from ..errors import ImageclfError, RetryLaterError, UserInputError
from ..fileio import csv_text, parse_json
from ..models.naming import safe_component
from .extensions import get_service
from .json_body import image_from_json, is_json, json_body_limit
from .pictures import display_copy
from .quota import Quota, spend
from .uploads import MB, Upload, collect_uploads, form_value

EXTENSION = "imageclf.feedback"
LOG_NAME = "feedback.csv"
LOG_HEADER = ["time", "model_version", "predicted", "confidence", "corrected", "key", "file"]
NONE_FOLDER = ".none"  # hidden: `imageclf train --data DIR` ignores it
NONE_LABEL = "none of these"
STAGING = ".staging"
LOCK_NAME = ".lock"
ANSWERS = ("right", "wrong", "none")
# Longest side of a stored picture: detail enough to train at any input size we ship.
MAX_SIDE = 1024
DEFAULT_QUOTA_MB = 1024
DEFAULT_PER_MINUTE = 30.0  # answers per client and worker; bursts of DEFAULT_BURST
DEFAULT_BURST = 10
# The page posts back its own PNG (<= 384 px, ~0.6 MB as base64): the form may hold that.
PAGE_FORM_BYTES = 2 * MB
MAX_CLIENTS = 10_000  # rate buckets remembered; the least recently seen are dropped
_JSON_FIELDS = {"image", "answer", "label"}


class FeedbackOffError(ImageclfError):
    """This server keeps no feedback (started without --feedback-dir): HTTP 404."""

    http_status = 404


class FeedbackFullError(ImageclfError):
    """The feedback folder reached its disk quota (HTTP 507)."""

    http_status = 507


class FeedbackRateError(RetryLaterError):
    """This client sent answers faster than the per-client rate (HTTP 429)."""


@dataclass(frozen=True)
class Answer:
    """What one feedback line records: the server's prediction and the user's label."""

    predicted: str
    confidence: float
    corrected: str | None  # None: none of these
    version: str
    key: str


class ClientRate:
    """Token buckets keyed by client address, in this worker (like the decode shares)."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.quota = Quota(per_minute / 60.0, max(1, int(burst)))
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, now: float | None = None) -> float:
        """Spend one answer: 0.0 if allowed, else the seconds until one is."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, stamp = self._buckets.pop(client, (float(self.quota.burst), now))
            tokens, wait = spend(tokens, stamp, now, self.quota)
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
        return wait


def encode_png(image: Image.Image) -> bytes:
    """Our own PNG of the picture: RGB pixels only (no EXIF, ICC profile or text)."""
    small = display_copy(image, MAX_SIDE).convert("RGB")
    clean = Image.new("RGB", small.size)  # a new image: none of the upload's metadata
    clean.paste(small)
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG")
    return buffer.getvalue()


class FeedbackStore:
    """The feedback folder: pictures by label, the CSV log, the quota and the rate."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        quota_mb: float = DEFAULT_QUOTA_MB,
        per_minute: float = DEFAULT_PER_MINUTE,
        burst: int = DEFAULT_BURST,
    ) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UserInputError(f"--feedback-dir {self.root} exists and is not a folder")
        try:
            (self.root / STAGING).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserInputError(f"cannot create the feedback folder {self.root}: {exc}") from None
        self.quota_bytes = int(quota_mb * MB)
        self.rate = ClientRate(per_minute, burst)
        self._lock = threading.Lock()

    def check_rate(self, client: str) -> None:
        wait = self.rate.take(client)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            per_minute = self.rate.quota.rate * 60.0
            raise FeedbackRateError(
                f"too many answers from this address ({per_minute:g} a minute, bursts of "
                f"{self.rate.quota.burst}): retry in {seconds} s",
                seconds,
            )

    def usage(self) -> int:
        """Bytes under the folder now (every worker's writes, whatever else is there)."""
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(folder, name)).st_size
        return total

    @contextlib.contextmanager
    def _exclusive(self):
        """One writer at a time, across threads and worker processes."""
        with self._lock, open(self.root / LOCK_NAME, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def save(self, image: Image.Image, answer: Answer) -> dict[str, Any]:
        """Store the picture (once) and log the answer; 507 when over the quota."""
        png = encode_png(image)
        name = hashlib.sha256(png).hexdigest()[:32] + ".png"
        folder = NONE_FOLDER if answer.corrected is None else safe_component(answer.corrected)
        relative = f"{folder}/{name}"
        with self._exclusive():
            if self.usage() + len(png) + 512 > self.quota_bytes:
                raise FeedbackFullError(
                    f"the feedback folder is full ({self.quota_bytes // MB} MB quota): "
                    "nothing was stored; the operator can train on it and make room"
                )
            duplicate = self._write_once(self.root / folder / name, png)
            self._log(answer, relative)
        return {"file": relative, "duplicate": duplicate}

    def _write_once(self, path: Path, data: bytes) -> bool:
        """Write ``data`` at ``path`` atomically unless it exists: True if it did."""
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / STAGING, suffix=".png")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.link(tmp, path)  # fails if the name is taken: never overwrites
        except FileExistsError:
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False

    def _log(self, answer: Answer, relative: str) -> None:
        path = self.root / LOG_NAME
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        corrected = NONE_LABEL if answer.corrected is None else answer.corrected
        row = [now, answer.version, answer.predicted, f"{answer.confidence:.4f}", corrected]
        rows = [[*row, answer.key, relative]]
        if not path.exists() or path.stat().st_size == 0:
            rows.insert(0, LOG_HEADER)
        with open(path, "a", encoding="utf-8", newline="") as handle:
            handle.write(csv_text(rows))
            handle.flush()
            os.fsync(handle.fileno())


def init_feedback(app: Flask) -> None:
    """Open the feedback folder named by ``IMAGECLF_FEEDBACK_DIR`` (nothing if unset)."""
    root = app.config.get("IMAGECLF_FEEDBACK_DIR")
    if root:
        app.extensions[EXTENSION] = FeedbackStore(
            root,
            quota_mb=float(app.config["IMAGECLF_FEEDBACK_QUOTA_MB"]),
            per_minute=float(app.config["IMAGECLF_FEEDBACK_PER_MINUTE"]),
            burst=int(app.config["IMAGECLF_FEEDBACK_BURST"]),
        )


def feedback_settings(
    root: str | None, quota_mb: float | None, per_minute: float | None
) -> dict[str, Any]:
    """The app settings for ``serve --feedback-dir`` (empty when off); the folder is
    made and checked here, once, so a bad path is one error line before any worker."""
    if not root:
        return {}
    FeedbackStore(root)
    settings: dict[str, Any] = {"IMAGECLF_FEEDBACK_DIR": str(Path(root).resolve())}
    if quota_mb is not None:
        settings["IMAGECLF_FEEDBACK_QUOTA_MB"] = quota_mb
    if per_minute is not None:
        settings["IMAGECLF_FEEDBACK_PER_MINUTE"] = per_minute
    return settings


def feedback_enabled() -> bool:
    return EXTENSION in current_app.extensions


def _store() -> FeedbackStore:
    store = current_app.extensions.get(EXTENSION)
    if store is None:
        raise FeedbackOffError(
            "feedback is off on this server (start it with serve --feedback-dir DIR)"
        )
    return store


def _corrected(answer: str | None, label: str | None, classes: list[str]) -> str | None:
    """The user's label from the answer (``right``: filled in later); 400 if unusable."""
    if answer not in ANSWERS:
        raise BadRequest("answer must be right, wrong or none")
    if answer == "wrong":
        if label is None:
            raise BadRequest("answer=wrong needs label: the class the picture really is")
        if label not in classes:
            raise BadRequest("label must be one of the model's classes (GET /api/v1/model)")
        return label
    return None


def record(
    upload: Upload,
    answer: str | None,
    label: str | None,
    shown: str | None,
    model: str | None = None,
) -> dict:
    """Classify the picture again (with the served model ``model``, None: the default),
    then store it under the user's answer."""
    store = _store()
    client = request.remote_addr or "local"
    store.check_rate(client)
    service = get_service()
    # One version for the whole answer: a reload meanwhile does not change it.
    loaded = service.current(model, float(current_app.config["IMAGECLF_MODEL_WAIT_S"]))
    predictor = loaded.predictor
    if predictor.multi_label:  # DIR/<label>/ holds one label per picture
        raise BadRequest(
            "feedback files each picture under one label; this model gives several labels "
            "per picture, so its answers cannot be kept that way"
        )
    corrected = _corrected(answer, label, predictor.classes)
    if shown is not None and shown not in predictor.classes:
        raise BadRequest("shown must be one of the model's classes")
    (result,) = service.classify([upload], top_k=1, client=client, model=loaded)
    predicted, confidence = result.top[0]
    if answer == "right":  # what the user saw and confirmed (the page sends it)
        corrected = shown or predicted
    version = loaded.version
    key = g.get("api_key") or "anonymous"
    entry = Answer(predicted, float(confidence), corrected, version, key)
    stored = store.save(result.image, entry)
    return {
        "stored": stored["file"],
        "duplicate": stored["duplicate"],
        "predicted": predicted,
        "confidence": float(confidence),
        "label": NONE_LABEL if corrected is None else corrected,
        "model_version": version,
    }


def read_api_answer() -> tuple[Upload, str | None, str | None]:
    """The picture, answer and label of ``POST /api/v1/feedback`` (multipart or JSON)."""
    _store()  # 404 before reading a body when feedback is off
    max_bytes = int(current_app.config["IMAGECLF_MAX_UPLOAD_BYTES"])
    if not is_json(request):
        (upload,) = collect_uploads(request, {"file": 1}, max_bytes=max_bytes, max_files=1)
        return upload, form_value(request, "answer"), form_value(request, "label")
    request.max_content_length = json_body_limit(max_bytes)
    try:
        body = parse_json(request.get_data(cache=False).decode("utf-8"), what="the JSON body")
    except (UnicodeDecodeError, UserInputError) as exc:
        raise BadRequest(f"the JSON body is not valid: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest('the JSON body must be an object like {"image": {...}, "answer": ...}')
    unknown = sorted(set(body) - _JSON_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}: the body takes image, answer, label")
    upload = image_from_json(body.get("image"), 0, max_bytes)
    answer, label = body.get("answer"), body.get("label")
    if not isinstance(answer, str) or not (label is None or isinstance(label, str)):
        raise BadRequest("answer and label must be strings")
    return upload, answer, label


def read_page_answer() -> tuple[Upload, str | None, str | None, str | None]:
    """The page's form: the PNG the result page carried, the answer and the labels."""
    _store()
    request.max_form_memory_size = PAGE_FORM_BYTES
    text = request.form.get("picture", "")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not data:
        raise BadRequest("the answer came without its picture; classify it again")
    answer = request.form.get("answer")
    label = request.form.get("label")
    return Upload("page", data), answer, label, request.form.get("shown")
