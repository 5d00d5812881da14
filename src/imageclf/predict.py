"""``Predictor``: the one prediction path for the CLI, the reports and the web app."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .bundle import Bundle, build_model, load_bundle
from .data.loader import Normalizer
from .device import resolve_device, resolve_precision
from .errors import BundleError, UserInputError
from .imaging import ImageSource, open_image, resize_for_model
from .inference import predict_logits

DEFAULT_BUNDLE = "default.safetensors"


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

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32") -> None:
        self.bundle = bundle
        self.metadata = bundle.metadata
        self.device = resolve_device(device)
        self.amp_dtype = resolve_precision(self.device, precision)
        self.model = build_model(bundle).to(self.device, memory_format=torch.channels_last)
        norm = self.metadata["normalization"]
        self.normalizer = Normalizer(norm["mean"], norm["std"])
        self.input_size = int(self.metadata["input_size"])

    @classmethod
    def load(
        cls, path: str | os.PathLike | None = None, device: str = "cpu", precision: str = "fp32"
    ) -> Predictor:
        """``path=None`` loads the bundled default model."""
        return cls(load_bundle(path or default_model_path()), device=device, precision=precision)

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    @property
    def name(self) -> str:
        return self.bundle.name

    def preprocess(self, images: ImageSource | Sequence[ImageSource]) -> np.ndarray:
        """Decode and resize to the model's input: (N, S, S, 3) uint8."""
        items = _as_list(images)
        return np.stack([resize_for_model(open_image(item), self.input_size) for item in items])

    def predict_proba(self, batch_u8: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """Probabilities (N, classes) for already-preprocessed uint8 images."""
        logits = predict_logits(
            self.model,
            torch.from_numpy(np.ascontiguousarray(batch_u8)),
            self.normalizer,
            tta=tta,
            device=self.device,
            amp_dtype=self.amp_dtype,
        )
        return torch.softmax(logits, dim=1).numpy()

    def predict(
        self, images: ImageSource | Sequence[ImageSource], top_k: int = 3, *, tta: bool = False
    ) -> list[list[tuple[str, float]]]:
        """One list of (label, probability), most likely first, per image. An image is a
        path, bytes, a file object, a PIL image or a uint8 HxWx3 NumPy array (an NxHxWx3
        array is a batch)."""
        if top_k < 1:
            raise UserInputError("top_k must be at least 1")
        probs = self.predict_proba(self.preprocess(images), tta=tta)
        return [self.top(p, top_k) for p in probs]

    def top(self, probs: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        order = np.argsort(-probs, kind="stable")[: min(top_k, len(self.classes))]
        return [(self.classes[i], float(probs[i])) for i in order]


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)  # a batch: N x H x W x C
    return [images]
