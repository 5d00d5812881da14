"""The model behind the web app: loaded once per process, shared by the pages and the API.

Uploads arrive as bytes and never touch the disk; they are decoded with the web
allowlist and our pixel limit, then classified in one batched forward pass through
the same ``Predictor`` the CLI and the reports use.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..calibration import FAMILIAR_VAL_FLAGGED
from ..errors import ImageclfError
from ..imaging import (
    DECODE_SECONDS,
    MAX_PIXELS,
    MAX_REQUEST_PIXELS,
    WEB_FORMATS,
    DecodeBudget,
    Decoded,
    decode_image,
    working_size,
)
from ..prediction.gradcam import overlay
from ..prediction.predictor import Predictor, default_model_path
from .decoding import DecodeLedger, DecodeScheduler
from .forward import MAX_BATCH_ROWS, ForwardRunner
from .memory import release_free_memory
from .uploads import Upload

log = logging.getLogger("imageclf.web")

# After a request that decoded this many pixels, hand the freed memory back at once.
RELEASE_AFTER_PIXELS = 4_000_000


class ModelNotReadyError(ImageclfError):
    """The model is still loading (or failed to load): try again shortly (HTTP 503)."""

    http_status = 503


@dataclass
class Prediction:
    """One classified image: the decoded picture, its top classes, an optional Grad-CAM."""

    filename: str
    image: Image.Image
    top: list[tuple[str, float]]
    explanation: Image.Image | None = None
    size: tuple[int, int] = (0, 0)  # the upload's own size, upright (decoding may reduce)
    class_index: int = 0
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0))
    unsure: bool = False  # which class? top-1 under the bundle's validated threshold
    outside: bool = False  # one of its classes? familiarity under the bundle's threshold
    model_view: np.ndarray | None = None  # (S, S, 3) uint8: the picture as the model saw it


class ModelService:
    """Owns the ``Predictor``; loads it eagerly, in the background, or on demand.

    ``ready`` turns true once the model is loaded, which is what ``/readyz`` reports.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None,
        *,
        max_pixels: int = MAX_PIXELS,
        max_request_pixels: int = MAX_REQUEST_PIXELS,
        decode_seconds: float = DECODE_SECONDS,
        torch_threads: int | None = None,
        on_loaded: Callable[[Predictor], None] | None = None,
        on_forward_pass: Callable[[int], None] | None = None,
        decoder: DecodeScheduler | None = None,
        max_batch: int = MAX_BATCH_ROWS,
        batch_wait_ms: float = 0.0,
    ) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.on_loaded = on_loaded  # e.g. the metrics' model-ready gauge
        self.max_pixels = max_pixels
        self.max_request_pixels = max_request_pixels
        self.decode_seconds = decode_seconds
        self.torch_threads = torch_threads
        # The model's own thread in a gevent worker; reports the pictures per pass.
        self.runner = ForwardRunner(
            on_pass=on_forward_pass, max_rows=max_batch, wait_s=batch_wait_ms / 1000.0
        )
        # Decoding's own thread, fair between clients, each within its share of time.
        self.decoder = decoder or DecodeScheduler(DecodeLedger())
        self.error: str | None = None
        self._predictor: Predictor | None = None
        self.version = ""  # the model file's sha256 (first 16 hex digits), once loaded
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
                    self.version = model_version(self.model_path or default_model_path())
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
        return {
            "name": p.name,
            "architecture": meta.architecture,
            "classes": p.classes,
            "input_size": p.input_size,
            "normalization": meta["normalization"],
            "metrics": meta.metrics,
            "test_accuracy": meta.test_accuracy,
            "created": meta.created,
            # Grad-CAM works for every torch model with a Conv2d; an ONNX export has none.
            "explain": p.explainable,
            "backend": p.backend,
            "calibrated": meta.unsure_below is not None,
            "temperature": p.temperature,
            "unsure_below": p.unsure_below,
            "familiar_above": p.familiar_above,
            # The share of validation pictures the familiarity rule flags (calibration.py).
            "familiar_flagged": FAMILIAR_VAL_FLAGGED,
            "class_count": len(p.classes),
            # Which file this is: feedback lines and retrained models name it.
            "version": self.version,
        }

    # ------------------------------------------------------------ predicting
    def decode_all(self, uploads: list[Upload], working_size: int) -> list[Decoded]:
        """Decode each upload once, under one budget for the whole request, or raise the
        ``ImageError`` of the first that fails (named when the request holds several).

        Each picture is shrunk to ``working_size`` as soon as it is decoded, so a batch
        holds at most one full-resolution picture at any moment.
        """
        budget = DecodeBudget(max_pixels=self.max_request_pixels, seconds=self.decode_seconds)
        decoded = []
        failure: ImageclfError | None = None
        for index, upload in enumerate(uploads):
            try:
                decoded.append(
                    decode_image(
                        upload.data,
                        formats=WEB_FORMATS,
                        max_pixels=self.max_pixels,
                        reduce_to=working_size,
                        budget=budget,
                    )
                )
            except ImageclfError as exc:
                label = f"file {index + 1} ({upload.filename or 'unnamed'}): "
                # A new exception without the decoder's traceback, which would keep the
                # full-size picture alive until the response is sent.
                failure = type(exc)((label if len(uploads) > 1 else "") + str(exc))
                break
        if budget.used_pixels >= RELEASE_AFTER_PIXELS:
            release_free_memory()
        if failure is not None:
            raise failure
        return decoded

    def classify(
        self,
        uploads: list[Upload],
        *,
        top_k: int,
        explain: bool = False,
        wait_s: float = 0.0,
        client: str = "local",
    ) -> list[Prediction]:
        """Decode every upload, then one forward pass for the whole batch (shared with
        other requests waiting at the same moment: ``forward.ForwardRunner``).

        The first undecodable file fails the request with its own status: a batch
        answer is all-or-nothing, so a client never mistakes a partial result.
        """
        predictor = self.predictor(wait_s)
        # Reduced like every other caller's pictures (``Predictor.decode``), so the page,
        # the API and ``predict`` give one picture the same answer.
        reduced = working_size(predictor.input_size)
        decoded = self.decoder.run(client, self.decode_all, uploads, reduced)
        # Decoded once: upright, no orientation left, so nothing is turned twice.
        batch = np.stack([predictor.prepare(d.picture) for d in decoded])
        logits = self.runner.logits(predictor, batch)
        probs = predictor.softmax(logits)
        best = probs.argmax(axis=1)
        unsure = predictor.unsure(probs)
        outside = predictor.outside(logits)
        overlays: list[Image.Image | None] = [None] * len(decoded)
        if explain and predictor.explainable:  # one Grad-CAM pass, drawn on each picture
            heatmaps = self.runner.call(predictor.gradcam, batch, best).heatmaps
            overlays = [overlay(d.picture, h) for d, h in zip(decoded, heatmaps, strict=True)]
        return [
            Prediction(
                filename=upload.filename,
                image=item.picture,
                top=predictor.top(row, top_k),
                size=item.size,
                class_index=int(index),
                probabilities=row,
                explanation=drawn,
                unsure=bool(doubt),
                outside=bool(elsewhere),
                model_view=view,
            )
            for upload, item, row, index, drawn, doubt, elsewhere, view in zip(
                uploads, decoded, probs, best, overlays, unsure, outside, batch, strict=True
            )
        ]


def model_version(path: Path) -> str:
    """The model file's sha256, first 16 hex digits: the same for a bundle or an .onnx,
    and different for every retrained file (the bundle's own digest covers weights and
    metadata, the file hash everything)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _limit_torch_threads(threads: int) -> None:
    """Several server workers share the cores: each gets its slice, none oversubscribes."""
    import torch

    torch.set_num_threads(threads)
    # Only settable once, before any inter-op work; harmless to skip if too late.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
