"""``Predictor``: the one path from a picture to class probabilities, for the CLI, the
reports and the web app alike.

A ``Predictor`` runs its forward pass on a backend (``backends.Backend``): a bundle's torch
model (``TorchBackend``) or an exported ``.onnx`` graph on onnxruntime (``OnnxBackend``).
Everything around that pass is written here once: pictures in (``imaging``'s one decode
and one array rule), calibration, top-k, Grad-CAM where the backend has gradients. A
bundle's ImageNet gate (``gate.py``) judges decoded photos in ``verdict``/``judged``;
methods that take prepared arrays (``predict_proba``, ``calibrated_logits``...) are the
model's own. A multi-label bundle goes through the same methods: per-label calibrated
sigmoids, the labels at or above their thresholds (``labels.py``), and no "unsure" or
"outside".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..calibration import UNCALIBRATED_UNSURE_BELOW, familiarity
from ..device import precision_name
from ..errors import BundleError, UserInputError
from ..imaging import (
    ImageSource,
    open_image,
    picture_from_array,
    resize_for_model,
    working_size,
)
from ..models.bundle import load_bundle
from ..models.metadata import BundleMetadata
from . import labels as multilabel
from .backends import Backend, explaining
from .gate import Gate, Survey
from .gradcam import DEFAULT_SIZE, Explanation, GradCAM, overlay
from .onnx_backend import OnnxBackend
from .torch_backend import TorchBackend

DEFAULT_BUNDLE = "default.safetensors"
# A file, bytes, a PIL image, or an array (``imaging.picture_from_array`` says which).
Picture = ImageSource | np.ndarray


def is_onnx_path(path: str | os.PathLike | None) -> bool:
    """An exported ONNX model (``imageclf export``) rather than a bundle."""
    return path is not None and Path(path).suffix.lower() == ".onnx"


def default_model_path() -> Path:
    """The pretrained model shipped inside the package."""
    path = Path(str(resources.files("imageclf") / "weights" / DEFAULT_BUNDLE))
    if not path.is_file():
        raise BundleError(
            f"the bundled default model is missing ({path}); pass a model file explicitly"
        )
    return path


class Predictor:
    """A loaded model plus its preprocessing, ready to classify images."""

    def __init__(self, engine: Backend) -> None:
        self.engine = engine  # what runs the forward pass; ``backend`` is its name

    @classmethod
    def load(
        cls, path: str | os.PathLike | None = None, device: str = "cpu", precision: str = "fp32"
    ) -> Predictor:
        """``path=None`` loads the bundled default model; a ``.onnx`` file runs on
        onnxruntime (``imageclf[onnx]``) behind this same API."""
        if is_onnx_path(path):
            return cls(OnnxBackend.open(path, device=device, precision=precision))
        bundle = load_bundle(path or default_model_path())
        return cls(TorchBackend(bundle, device=device, precision=precision))

    # ------------------------------------------------------------ what it is
    @property
    def backend(self) -> str:
        """What runs the forward pass, "pytorch" or "onnxruntime" (metrics, /api/v1/model)."""
        return self.engine.name

    @property
    def explainable(self) -> bool:
        """Whether ``gradcam``/``explain`` work: the backend has the model's gradients."""
        return self.engine.can_explain

    @property
    def metadata(self) -> BundleMetadata:
        return self.engine.metadata

    @property
    def classes(self) -> list[str]:
        return self.metadata.classes

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def precision(self) -> str:
        """The arithmetic of the forward pass: "bfloat16" under autocast, else "fp32"."""
        return precision_name(getattr(self.engine, "amp_dtype", None))

    @property
    def model(self) -> nn.Module | None:
        """The torch module (for tests that inspect weights); None on onnxruntime."""
        return self.engine.model if isinstance(self.engine, TorchBackend) else None

    # ------------------------------------------------------------ pictures in
    def prepare(self, picture: Image.Image | np.ndarray) -> np.ndarray:
        """One *decoded* picture (upright RGB, e.g. from ``imaging.open_image``, or an
        array: ``imaging.picture_from_array``) -> the model's input, (S, S, 3) uint8
        squashed to S x S. It is not decoded or oriented again: decode once, then pass
        the picture along."""
        if isinstance(picture, np.ndarray):
            picture = picture_from_array(picture)
        elif picture.mode != "RGB":
            picture = picture.convert("RGB")
        return resize_for_model(picture, self.input_size, self.metadata.source_size)

    def decode(self, source: Picture) -> Image.Image:
        """One picture decoded the way every caller decodes it for this model (upright
        RGB, reduced to ``imaging.working_size``): the web app, ``predict`` and
        ``preprocess`` share it, so the same file gets the same probabilities."""
        return open_image(source, reduce_to=working_size(self.input_size))

    def preprocess(self, images: Picture | Sequence[Picture]) -> np.ndarray:
        """Decode (files, bytes, PIL images, arrays: ``open_image``) and prepare:
        (N, S, S, 3) uint8."""
        return np.stack([self.prepare(self.decode(item)) for item in _as_list(images)])

    # ------------------------------------------------------------ probabilities out
    @property
    def temperature(self) -> float:
        """Fitted on validation at the end of training; every output below is divided by it."""
        return self.metadata.temperature

    @property
    def unsure_below(self) -> float:
        """The calibrated top-1 confidence under which an answer says "not sure": the
        bundle's own, chosen on validation (``calibration.py``), or a plain 50% for bundles
        trained before calibration existed. The page, the API and ``predict`` all use it."""
        threshold = self.metadata.unsure_below
        return UNCALIBRATED_UNSURE_BELOW if threshold is None else threshold

    def unsure(self, probs: np.ndarray) -> np.ndarray:
        """Which rows of calibrated (N, C) probabilities say "not sure": top-1 under
        ``unsure_below``. The one rule for the page, the API and ``predict``."""
        if self.multi_label:  # several labels or none is an answer, not a doubt
            return np.zeros(len(probs), dtype=bool)
        return probs.max(axis=1) < self.unsure_below

    @property
    def familiar_above(self) -> float | None:
        """Familiarity under which a picture is "not one of its classes" (``calibration``),
        None when the bundle predates the rule (then nothing is called outside)."""
        return self.metadata.familiar_above

    def outside(self, calibrated_logits: np.ndarray) -> np.ndarray:
        """Which rows look like none of the model's classes: familiarity under the bundle's
        validated threshold. A separate question from ``unsure`` (which class?)."""
        if self.familiar_above is None or self.multi_label:
            return np.zeros(len(calibrated_logits), dtype=bool)
        return familiarity(calibrated_logits) < self.familiar_above

    @property
    def gate(self) -> Gate | None:
        """The bundle's ImageNet gate (``gate.py``), None without one or on onnxruntime."""
        return getattr(self.engine, "gate", None)

    def verdict(
        self,
        calibrated_logits: np.ndarray,
        pictures: Sequence[Image.Image] | None = None,
        survey: Survey | None = None,
    ) -> Verdict:
        """Probabilities, "not sure" and "not one of its classes" for one batch: the rule
        the page, the API and both predicts share. A gate's votes (``survey``, or its pass
        now on the decoded ``pictures``) are multiplied into the photos it ``sees``, and
        its mass says "outside"; thumbnails keep the model's familiarity rule."""
        probs = self.probabilities(calibrated_logits)
        outside = self.outside(calibrated_logits)
        mass = np.full(len(probs), np.nan)
        if self.gate is not None and pictures is not None and not self.multi_label:
            mass = self.gate.judge(pictures, probs, outside, survey)
        return Verdict(probs, self.unsure(probs), outside, mass)

    def judged(
        self, batch_u8: np.ndarray, pictures: Sequence[Image.Image], *, tta: bool = False
    ) -> Verdict:
        """``verdict`` of prepared ``batch_u8`` and the same ``pictures`` decoded: the
        model's pass, then the gate's, each on all of torch's threads (one picture runs
        oneDNN Graph's trace, ``traced``: sooner so than the two passes side by side,
        docs/benchmarks.md)."""
        return self.verdict(self.calibrated_logits(batch_u8, tta=tta), pictures)

    def calibrated_logits(self, batch_u8: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """(N, classes) float32 ``logits / temperature`` (multi-label: ``scale * logit +
        bias`` per label), for callers that need both the probabilities (``probabilities``)
        and the familiarity from one pass."""
        return self._logits(batch_u8, tta).float().numpy()

    @staticmethod
    def softmax(calibrated_logits: np.ndarray) -> np.ndarray:
        """Probabilities from ``calibrated_logits``, the same as ``predict_proba``'s."""
        return torch.softmax(torch.from_numpy(calibrated_logits), dim=1).numpy()

    def _logits(self, batch_u8: np.ndarray, tta: bool) -> torch.Tensor:
        """Calibrated logits (``logits / temperature``; multi-label: each label's scale and
        bias, ``labels.calibrate``): the one place confidences are made."""
        logits = self.engine.logits(batch_u8, tta=tta)
        if self.multi_label:
            return multilabel.calibrate(logits, self.metadata.label_calibration)
        return logits / self.temperature

    def log_probs(self, batch_u8: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """Natural-log probabilities (N, classes), float64, for prepared uint8 images
        (multi-label: each label's own, ``log sigmoid``). ``tta`` averages over flipped and
        1-pixel-shifted views."""
        logits = self._logits(batch_u8, tta).double()
        if self.multi_label:
            return torch.nn.functional.logsigmoid(logits).numpy()
        return torch.log_softmax(logits, dim=1).numpy()

    def predict_proba(self, batch_u8: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """Probabilities (N, classes), float32, for prepared uint8 images (multi-label:
        independent per-label probabilities, which need not sum to 1)."""
        return self.probabilities(self._logits(batch_u8, tta).numpy())

    def probabilities(self, calibrated_logits: np.ndarray) -> np.ndarray:
        """Probabilities from ``calibrated_logits``: the softmax, or per-label sigmoids."""
        if self.multi_label:
            return multilabel.probabilities(calibrated_logits)
        return self.softmax(calibrated_logits)

    def predict(
        self,
        images: Picture | Sequence[Picture],
        top_k: int | None = None,
        *,
        tta: bool = False,
        threshold: float | None = None,
    ) -> list[list[tuple[str, float]]]:
        """One list of (label, probability), most likely first, per image. An image is a
        path, bytes, a file object, a PIL image or an HxWx3 NumPy array, uint8 or floats
        in 0..1 (an NxHxWx3 array is a batch). ``top_k`` defaults to 3; for a multi-label
        model, without ``top_k``: every label at or above its threshold (``threshold``
        overrides them all), perhaps none; ``predict_labels`` gives both."""
        if top_k is None and not self.multi_label:
            top_k = 3
        if top_k is not None and top_k < 1:
            raise UserInputError("top_k must be at least 1")
        found = self.predict_labels(images, top_k=top_k or 1, tta=tta, threshold=threshold)
        return [item.top if top_k is not None else item.labels for item in found]

    def predict_labels(
        self,
        images: Picture | Sequence[Picture],
        *,
        top_k: int = 3,
        tta: bool = False,
        threshold: float | None = None,
    ) -> list[multilabel.LabelPrediction]:
        """Per image: the labels that are on (a multi-label model: each at or above its
        threshold, or ``threshold``; a single-label one: its top label), with the top-k."""
        if top_k < 1:
            raise UserInputError("top_k must be at least 1")
        limits = self.label_thresholds(threshold)
        pictures = [self.decode(item) for item in _as_list(images)]
        batch = np.stack([self.prepare(p) for p in pictures])
        probs = self.judged(batch, pictures, tta=tta).probs
        on = multilabel.labels_on(probs, limits) if self.multi_label else probs[:, :0]
        return [
            multilabel.LabelPrediction(
                self.labels(row, row_on) if self.multi_label else self.top(row, 1),
                self.top(row, top_k),
                limits.tolist(),
            )
            for row, row_on in zip(probs, on, strict=True)
        ]

    @property
    def multi_label(self) -> bool:
        """Independent sigmoids, any number of labels per picture (``labels.py``)."""
        return self.metadata.multi_label

    def label_thresholds(self, threshold: float | None = None) -> np.ndarray:
        """Each label's threshold: the bundle's, or ``threshold`` for all (checked 0-1).
        A single-label model has none (an empty array; ``threshold`` is refused)."""
        if not self.multi_label:
            if threshold is not None:
                raise UserInputError(multilabel.SINGLE_LABEL_THRESHOLD)
            return np.zeros(0)
        return multilabel.thresholds(self.metadata.label_thresholds or [], threshold)

    def labels_on(self, probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """(N, C) bool: which labels are on, from ``probabilities`` (multi-label only)."""
        return multilabel.labels_on(probs, self.label_thresholds(threshold))

    def label_answers(
        self, probs: np.ndarray, threshold: float | None = None
    ) -> list[list[tuple[str, float, float]]]:
        """Per row of ``probabilities``: the labels that are on, as (label, probability,
        the threshold it met), most likely first (multi-label only)."""
        return multilabel.answers(probs, self.label_thresholds(threshold), self.classes)

    def labels(self, row: np.ndarray, on: np.ndarray) -> list[tuple[str, float]]:
        """One picture's labels that are on, as (label, probability), most likely first."""
        return multilabel.chosen(row, on, self.classes)

    def top(self, probs: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """The ``top_k`` (label, probability) pairs of one row of probabilities."""
        order = np.argsort(-probs, kind="stable")[: min(top_k, len(self.classes))]
        return [(self.classes[i], float(probs[i])) for i in order]

    # ------------------------------------------------------------ explanations
    def gradcam(
        self,
        batch_u8: np.ndarray,
        class_indices: Sequence[int] | np.ndarray | None = None,
        *,
        layer: str | None = None,
    ) -> GradCAM:
        """Grad-CAM of prepared uint8 images; ``class_indices=None`` explains each
        image's predicted class (multi-label: its most probable label; any label can be
        chosen); ``layer`` names a module (default: the last Conv2d)."""
        explainer = explaining(self.engine)
        if not self.multi_label:
            return explainer.gradcam(
                batch_u8, class_indices, layer=layer, temperature=self.temperature
            )
        # Each label's own calibrated sigmoid, not a softmax over labels, is its probability.
        probs = self.predict_proba(batch_u8)
        chosen = probs.argmax(axis=1) if class_indices is None else class_indices
        cam = explainer.gradcam(batch_u8, chosen, layer=layer)
        return replace(cam, probabilities=probs)

    def explain(
        self,
        image: Picture,
        class_index: int | None = None,
        *,
        layer: str | None = None,
        size: int = DEFAULT_SIZE,
    ) -> Explanation:
        """Grad-CAM of one picture, drawn on the picture itself (squashed to a square, as
        the model sees it) rather than on the tiny model input, so it stays sharp."""
        explaining(self.engine)  # refused before decoding when the backend cannot explain
        picture = self.decode(image)
        batch = self.prepare(picture)[None]
        classes = None if class_index is None else [class_index]
        cam = self.gradcam(batch, classes, layer=layer)
        index = int(cam.class_indices[0])
        return Explanation(
            heatmap=cam.heatmaps[0],
            overlay=overlay(picture, cam.heatmaps[0], size),
            class_index=index,
            label=self.classes[index],
            probability=float(cam.probabilities[0, index]),
            layer=cam.layer,
        )


@dataclass
class Verdict:
    """One batch's answers (``Predictor.verdict``): (N, C) probabilities and two flags."""

    probs: np.ndarray
    unsure: np.ndarray  # top-1 under the bundle's validated threshold: "which class?"
    outside: np.ndarray  # "not one of its classes": familiarity, or the gate's mass
    mass: np.ndarray  # the gate's probability on the model's classes; NaN: not judged


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)  # a batch: N x H x W x C
    return [images]
