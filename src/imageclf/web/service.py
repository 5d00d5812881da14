"""The model behind the web app: loaded once per process, shared by the pages and the API.

Uploads arrive as bytes and never touch the disk; they are decoded with the web
allowlist and our pixel limit, then classified in one batched forward pass through
the same ``Predictor`` the CLI and the reports use.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import logging
import os
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageclfError
from ..imaging import MAX_PIXELS, WEB_FORMATS, open_image
from ..predict import Predictor

log = logging.getLogger("imageclf.web")

# Result pages show the upload at most this big (the data URL stays small); large JPEGs
# decode at a reduced scale close to it, which is also plenty for a 32x32 model input.
DISPLAY_SIZE = 384
MAX_FILENAME_CHARS = 255


class ModelNotReadyError(ImageclfError):
    """The model is still loading (or failed to load): try again shortly (HTTP 503)."""

    http_status = 503


@dataclass
class Upload:
    """One uploaded file, held in memory."""

    filename: str
    data: bytes


@dataclass
class Prediction:
    """One classified image: the decoded picture, its top classes, an optional Grad-CAM."""

    filename: str
    image: Image.Image
    top: list[tuple[str, float]]
    explanation: Image.Image | None = None
    size: tuple[int, int] = (0, 0)  # the upload's own size, upright (decoding may draft)
    class_index: int = 0
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0))


def clean_filename(name: str | None) -> str:
    """A client's filename made safe to echo: no control characters, bounded length.

    It is only ever shown (escaped by Jinja/JSON), never used as a path.
    """
    text = "".join(ch for ch in (name or "") if unicodedata.category(ch)[0] != "C")
    if len(text) > MAX_FILENAME_CHARS:
        text = text[: MAX_FILENAME_CHARS - 1] + "…"
    return text


def png_data_url(image: Image.Image) -> str:
    """Re-encode a decoded picture as a PNG data URL: raw upload bytes are never echoed."""
    return "data:image/png;base64," + png_base64(image)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def original_size(data: bytes, decoded: Image.Image) -> tuple[int, int]:
    """The upload's width x height as the user sees it: big JPEGs decode at a reduced
    scale (draft), so read the header again (cheap) and apply the EXIF rotation."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            orientation = header.getexif().get(0x0112, 1)
    except Exception:
        return decoded.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def display_copy(image: Image.Image, size: int = DISPLAY_SIZE) -> Image.Image:
    """A copy no larger than ``size`` on its longest side, for showing back to the user."""
    if max(image.size) <= size:
        return image
    small = image.copy()
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    return small


class ModelService:
    """Owns the ``Predictor``; loads it eagerly, in the background, or on demand.

    ``ready`` turns true once the model is loaded, which is what ``/readyz`` reports.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None,
        *,
        max_pixels: int = MAX_PIXELS,
        torch_threads: int | None = None,
        on_loaded: Callable[[Predictor], None] | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.on_loaded = on_loaded  # e.g. the metrics' model-ready gauge
        self.max_pixels = max_pixels
        self.torch_threads = torch_threads
        self.error: str | None = None
        self._predictor: Predictor | None = None
        self._loaded = threading.Event()
        self._settled = threading.Event()  # set when a background load ends, either way
        self._loading = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------ loading
    @property
    def ready(self) -> bool:
        return self._loaded.is_set()

    def load(self) -> Predictor:
        """Load the model (once); raises the bundle's own error if it cannot."""
        with self._lock:
            if self._predictor is None:
                if self.torch_threads:
                    _limit_torch_threads(self.torch_threads)
                started = time.perf_counter()
                try:
                    self._predictor = Predictor.load(self.model_path)
                except ImageclfError as exc:
                    self.error = str(exc)
                    raise
                self.error = None
                if self.on_loaded:
                    self.on_loaded(self._predictor)
                self._loaded.set()
                log.info(
                    "model %s loaded in %.2fs", self._predictor.name, time.perf_counter() - started
                )
        return self._predictor

    def load_in_background(self) -> threading.Thread:
        """Start loading without blocking, so the process answers /healthz at once."""

        def run() -> None:
            try:
                self.load()
            except ImageclfError as exc:
                log.error("cannot load the model: %s", exc)
            except Exception:  # a bug: keep the traceback in the log, stay not-ready
                self.error = "the model failed to load (see the server log)"
                log.exception("unexpected error while loading the model")
            finally:
                self._loading = False
                self._settled.set()

        self._loading = True
        self._settled.clear()
        thread = threading.Thread(target=run, name="imageclf-model-loader", daemon=True)
        thread.start()
        return thread

    def predictor(self, wait_s: float = 0.0) -> Predictor:
        """The loaded predictor, waiting up to ``wait_s`` seconds for a load in progress."""
        if self._predictor is None and self._loading and wait_s > 0:
            self._settled.wait(wait_s)
        if self._predictor is None:
            reason = f": {self.error}" if self.error else "; try again in a moment"
            raise ModelNotReadyError(f"the model is not loaded yet{reason}")
        return self._predictor

    # ------------------------------------------------------------ describing
    def describe(self, predictor: Predictor | None = None) -> dict:
        """Name, classes, input size and metrics, as the API and the pages show them."""
        p = predictor or self.predictor()
        meta = p.metadata
        test = (meta.get("metrics") or {}).get("test") or {}
        accuracy = test.get("accuracy")
        return {
            "name": p.name,
            "architecture": meta.get("architecture"),
            "classes": p.classes,
            "input_size": p.input_size,
            "normalization": meta.get("normalization"),
            "metrics": meta.get("metrics") or {},
            "test_accuracy": float(accuracy) if isinstance(accuracy, int | float) else None,
            "created": meta.get("created"),
            # Grad-CAM needs the torch model: an ONNX export serves without it.
            "explain": explainer_available() and p.explainable,
            "backend": "pytorch" if p.explainable else "onnxruntime",
        }

    # ------------------------------------------------------------ predicting
    def decode(self, upload: Upload) -> Image.Image:
        """Bytes -> upright RGB picture, or an ``ImageError`` carrying its HTTP status."""
        return open_image(
            upload.data, formats=WEB_FORMATS, max_pixels=self.max_pixels, draft_size=DISPLAY_SIZE
        )

    def classify(
        self,
        uploads: list[Upload],
        *,
        top_k: int,
        explain: bool = False,
        wait_s: float = 0.0,
    ) -> list[Prediction]:
        """Decode every upload, then one forward pass for the whole batch.

        The first undecodable file fails the request with its own status: a batch
        answer is all-or-nothing, so a client never mistakes a partial result.
        """
        predictor = self.predictor(wait_s)
        images: list[Image.Image] = []
        for index, upload in enumerate(uploads):
            try:
                images.append(self.decode(upload))
            except ImageclfError as exc:
                if len(uploads) > 1:
                    label = f"file {index + 1} ({upload.filename or 'unnamed'})"
                    raise type(exc)(f"{label}: {exc}") from None
                raise
        probs = predictor.predict_proba(predictor.preprocess(images))
        results = []
        for upload, image, row in zip(uploads, images, probs, strict=True):
            best = int(np.argmax(row))
            results.append(
                Prediction(
                    filename=upload.filename,
                    image=image,
                    top=predictor.top(row, top_k),
                    size=original_size(upload.data, image),
                    class_index=best,
                    probabilities=row,
                    explanation=(
                        explain_image(predictor, image, best)
                        if explain and predictor.explainable
                        else None
                    ),
                )
            )
        return results


def _limit_torch_threads(threads: int) -> None:
    """Several server workers share the cores: each gets its slice, none oversubscribes."""
    import torch

    torch.set_num_threads(threads)
    # Only settable once, before any inter-op work; harmless to skip if too late.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


# ---------------------------------------------------------------- Grad-CAM hook
# TODO(gradcam): the explanation is optional. The web app uses
# ``imageclf.gradcam.explain(predictor, pil_image, class_index=...)`` and shows its
# ``.overlay`` (a PIL image). If that module or function is missing, or its contract
# changes, pages and API simply go without an explanation (logged once); adapt this
# one function to a new contract.
_explainer_warning_logged = False


def _explainer():
    try:
        module = importlib.import_module("imageclf.gradcam")
    except ImportError:
        return None
    return getattr(module, "explain", None)


def explainer_available() -> bool:
    """Whether Grad-CAM overlays can be produced in this installation."""
    return callable(_explainer())


def explain_image(predictor: Predictor, image: Image.Image, class_index: int) -> Image.Image | None:
    """Grad-CAM overlay for ``class_index``, or ``None`` when explanations are unavailable."""
    global _explainer_warning_logged
    explain = _explainer()
    if not callable(explain):
        return None
    try:
        result = explain(predictor, image, class_index=class_index)
        overlay = getattr(result, "overlay", result)
        if isinstance(overlay, Image.Image):
            return overlay
        raise TypeError(f"expected a PIL image or an object with .overlay, got {type(result)}")
    except Exception:
        if not _explainer_warning_logged:
            log.exception("Grad-CAM failed; predictions are served without explanations")
            _explainer_warning_logged = True
        return None
