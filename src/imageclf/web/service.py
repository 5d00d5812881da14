"""The models behind the web app: loaded once per process, shared by the pages and the API.

Several models may be served (``models.py``: one slot per name, the first the
default), each switched to a new version without a restart (``reload.py``).

Uploads arrive as bytes and never touch the disk; they are decoded with the web
allowlist and our pixel limit, then classified in one batched forward pass through
the same ``Predictor`` the CLI and the reports use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..allocator import release_free_memory
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
from ..prediction.predictor import Predictor
from .decoding import DecodeLedger, DecodeScheduler
from .forward import MAX_BATCH_ROWS, ForwardRunner
from .model_store import ModelStore
from .models import Loaded, ModelSlot, ModelSpec, parse_model_specs
from .reload import RELOAD_POLL_S, Reloader, ReloadResult, Watcher
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
    gate_mass: float | None = None  # the ImageNet gate's share on its classes, if it judged
    model_view: np.ndarray | None = None  # (S, S, 3) uint8: the picture as the model saw it
    # A multi-label model's labels at or above their thresholds: (label, probability,
    # threshold), most likely first, perhaps none; None for a single-label model.
    labels: list[tuple[str, float, float]] | None = None
    model: str = ""  # the served name and version that answered (``models.Loaded``)
    version: str = ""


class ModelNotFoundError(ImageclfError):
    """No model is served under that name (HTTP 404)."""

    http_status = 404


class ModelService:
    """Owns the served models (``models.ModelSlot`` per name); loads them eagerly, in the
    background, or on demand, and reloads them (``reload.Reloader``, ``reload.Watcher``).

    ``ready`` turns true once every model is loaded, which is what ``/readyz`` reports.
    """

    def __init__(
        self,
        models: Sequence[ModelSpec] | str | os.PathLike | None,
        *,
        max_pixels: int = MAX_PIXELS,
        max_request_pixels: int = MAX_REQUEST_PIXELS,
        decode_seconds: float = DECODE_SECONDS,
        torch_threads: int | None = None,
        on_loaded: Callable[[Predictor], None] | None = None,
        on_forward_pass: Callable[[int], None] | None = None,
        on_reload: Callable[[str, str], None] | None = None,
        decoder: DecodeScheduler | None = None,
        max_batch: int = MAX_BATCH_ROWS,
        batch_wait_ms: float = 0.0,
        store: ModelStore | None = None,
        memory_limit_mb: float | None = None,
        allow_class_change: bool = False,
        reload_poll_s: float = RELOAD_POLL_S,
    ) -> None:
        if models is None or isinstance(models, str | os.PathLike):
            models = parse_model_specs([models] if models else [])
        self.slots = {spec.name: ModelSlot(spec, default=i == 0) for i, spec in enumerate(models)}
        self.default_name = next(iter(self.slots))
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
        self.reloader = Reloader(
            store or ModelStore.private(),
            self.slots,
            batch=max_batch,
            memory_limit_mb=memory_limit_mb,
            allow_class_change=allow_class_change,
            on_outcome=on_reload,
            on_switch=lambda loaded: self.on_loaded and self.on_loaded(loaded.predictor),
        )
        self.watcher = Watcher(self.reloader, reload_poll_s)
        self.error: str | None = None
        self._loaded = threading.Event()
        self._settled = threading.Event()  # set when a background load ends, either way
        self._loading = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------ loading
    @property
    def ready(self) -> bool:
        return self._loaded.is_set()

    @property
    def version(self) -> str:
        """The default model's version (its file's sha256, 16 hex digits), once loaded."""
        loaded = self.slots[self.default_name].current
        return loaded.version if loaded else ""

    def load(self) -> Predictor:
        """Load every model (once); raises the bundle's own error if one cannot load."""
        with self._lock:
            if not self._loaded.is_set():
                if self.torch_threads:
                    _limit_torch_threads(self.torch_threads)
                started = time.perf_counter()
                try:
                    for slot in self.slots.values():
                        if slot.current is None:
                            loaded = self.reloader.initial(slot)
                            log.info(
                                "model %s (%s) version %s in process %d: %s",
                                slot.name,
                                loaded.predictor.name,
                                loaded.version,
                                os.getpid(),
                                loaded.cost.text(),
                            )
                except ImageclfError as exc:
                    self.error = str(exc)
                    raise
                finally:
                    self.reloader.flush()
                self.error = None
                self._loaded.set()
                self.watcher.start()
                log.info("models loaded in %.2fs", time.perf_counter() - started)
        return self.predictor()

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
        # Not a daemon: a process that ends mid-load waits for it (seconds). A daemon thread
        # stopped inside torch's kernels at exit aborts the whole process ("terminate called
        # without an active exception", SIGABRT) instead of exiting.
        thread = threading.Thread(target=run, name="imageclf-model-loader", daemon=False)
        thread.start()
        return thread

    def slot(self, name: str | None = None) -> ModelSlot:
        """The slot served as ``name`` (None: the default); 404 for an unknown name."""
        slot = self.slots.get(name or self.default_name)
        if slot is None:
            raise ModelNotFoundError(
                f"no model is served as {name!r}; GET /api/v1/models lists them"
            )
        return slot

    def current(self, name: str | None = None, wait_s: float = 0.0) -> Loaded:
        """The version ``name`` serves now, waiting up to ``wait_s`` for a load in
        progress. A request takes it once and keeps it to the end (one version)."""
        slot = self.slot(name)
        if slot.current is None and self._loading and wait_s > 0:
            self._settled.wait(wait_s)
        loaded = slot.current
        if loaded is None or not self.ready:
            reason = f": {self.error}" if self.error else "; try again in a moment"
            raise ModelNotReadyError(f"the model is not loaded yet{reason}")
        return loaded

    def predictor(self, wait_s: float = 0.0, name: str | None = None) -> Predictor:
        """The loaded predictor, waiting up to ``wait_s`` seconds for a load in progress."""
        return self.current(name, wait_s).predictor

    def reload(self, name: str) -> ReloadResult:
        """Check the model's file now (``POST /api/v1/models/NAME/reload``)."""
        slot = self.slot(name)
        self.current(name)
        result = self.watcher.run(self.reloader.check, slot)
        self.watcher.run(self.reloader.sync, slot)
        serving = slot.current.version if slot.current else ""
        return dataclasses.replace(result, version=serving)

    # ------------------------------------------------------------ describing
    def describe(self, which: Loaded | Predictor | None = None) -> dict:
        """Name, classes, input size and metrics, as the API and the pages show them;
        ``which``: a version (a request's), a predictor, or None (the default's now)."""
        loaded = which if isinstance(which, Loaded) else self._find(which)
        p = loaded.predictor
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
            "gate": p.gate.brief() if p.gate else None,
            # single_label, or multi_label: any number of labels, each with its threshold.
            "task": "multi_label" if p.multi_label else "single_label",
            "label_thresholds": p.label_thresholds().tolist() if p.multi_label else None,
            # Which file this is: feedback lines and retrained models name it.
            "version": loaded.version,
            # The name it is served as (serve --model NAME=PATH) and what it costs.
            "served_as": loaded.name,
            "default": loaded.name == self.default_name,
            "memory": loaded.cost.as_dict(),
        }

    def describe_all(self) -> list[dict]:
        """Every served model (``GET /api/v1/models``), the default first."""
        return [self.describe(self.current(name)) for name in self.slots]

    def _find(self, predictor: Predictor | None) -> Loaded:
        for slot in self.slots.values():
            if predictor is not None and slot.current and slot.current.predictor is predictor:
                return slot.current
        return self.current()

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
        model: Loaded | None = None,
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Decode every upload, then one forward pass for the whole batch (shared with
        other requests waiting at the same moment: ``forward.ForwardRunner``).

        The first undecodable file fails the request with its own status: a batch
        answer is all-or-nothing, so a client never mistakes a partial result.
        """
        loaded = model or self.current(None, wait_s)
        predictor = loaded.predictor
        # Reduced like every other caller's pictures (``Predictor.decode``), so the page,
        # the API and ``predict`` give one picture the same answer.
        reduced = working_size(predictor.input_size)
        decoded = self.decoder.run(client, self.decode_all, uploads, reduced)
        # Decoded once: upright, no orientation left, so nothing is turned twice.
        batch = np.stack([predictor.prepare(d.picture) for d in decoded])
        # A multi-label model's probabilities are per-label sigmoids; a gate (if the bundle
        # has one) judges the decoded photos (``ForwardRunner.verdict`` says where).
        verdict = self.runner.verdict(predictor, batch, [d.picture for d in decoded])
        probs = verdict.probs
        best = probs.argmax(axis=1)
        overlays: list[Image.Image | None] = [None] * len(decoded)
        if explain and predictor.explainable:  # one Grad-CAM pass, drawn on each picture
            heatmaps = self.runner.call(predictor.gradcam, batch, best).heatmaps
            overlays = [overlay(d.picture, h) for d, h in zip(decoded, heatmaps, strict=True)]
        results = [
            Prediction(
                filename=upload.filename,
                image=item.picture,
                top=predictor.top(probs[i], top_k),
                size=item.size,
                class_index=int(best[i]),
                probabilities=probs[i],
                explanation=overlays[i],
                unsure=bool(verdict.unsure[i]),
                outside=bool(verdict.outside[i]),
                gate_mass=None if np.isnan(verdict.mass[i]) else float(verdict.mass[i]),
                model_view=batch[i],
                model=loaded.name,
                version=loaded.version,
            )
            for i, (upload, item) in enumerate(zip(uploads, decoded, strict=True))
        ]
        if predictor.multi_label:  # every label at or above its threshold (labels.py)
            answers = predictor.label_answers(probs, threshold)
            for result, labels in zip(results, answers, strict=True):
                result.labels = labels
        return results


def _limit_torch_threads(threads: int) -> None:
    """Several server workers share the cores: each gets its slice, none oversubscribes."""
    import torch

    torch.set_num_threads(threads)
    # Only settable once, before any inter-op work; harmless to skip if too late.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
