"""What runs a ``Predictor``'s forward pass: the ``Backend`` protocol, which the torch
model (``torch_backend``) and an exported ONNX graph (``onnx_backend``) both offer.

A backend turns prepared uint8 pictures into uncalibrated logits and says what else it
can do (``can_explain``). Everything before and after (decoding, resizing, the
temperature, top-k) is ``Predictor``'s, written once for both, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import numpy as np
import torch

from ..errors import ModelOutputError, UserInputError
from ..models.metadata import BundleMetadata
from .gradcam import GradCAM

EXPLAIN_UNAVAILABLE = (
    "Grad-CAM needs the PyTorch model's gradients: use the .safetensors bundle, not the ONNX export"
)


class Backend(Protocol):
    """A loaded model that computes logits for prepared pictures."""

    name: str  # "pytorch" | "onnxruntime": the metrics label and /api/v1/model's "backend"
    metadata: BundleMetadata  # the bundle's, wherever it travelled (ONNX: metadata props)
    device: torch.device
    can_explain: bool  # Grad-CAM needs the model's gradients (an ExplainingBackend)

    def logits(self, batch_u8: np.ndarray, *, tta: bool = False) -> torch.Tensor:
        """Uncalibrated float32 logits (N, classes) on the CPU for prepared uint8 NHWC
        pictures; with ``tta``, the weighted log-probabilities of ``inference.tta_views``."""
        ...


class ExplainingBackend(Backend, Protocol):
    """A backend with gradients, which ``can_explain`` says it is."""

    def gradcam(
        self,
        batch_u8: np.ndarray,
        class_indices: Sequence[int] | np.ndarray | None = None,
        *,
        layer: str | None = None,
        temperature: float = 1.0,
    ) -> GradCAM:
        """Grad-CAM of prepared uint8 pictures (see ``gradcam.gradcam_batch``)."""
        ...


def probe_pictures(size: int) -> np.ndarray:
    """The probe pass's batch, run once when a model loads: two blank pictures (black and
    white), so a model that cannot answer a batch fails at load, not on a user's request."""
    pictures = np.zeros((2, size, size, 3), np.uint8)
    pictures[1] = 255
    return pictures


def checked_logits(logits: torch.Tensor, rows: int, classes: int) -> torch.Tensor:
    """``logits`` if they are one finite row of ``classes`` per picture, else the one
    ``ModelOutputError``: NaN would reach JSON as bare ``NaN`` (not JSON), and a short
    answer would silently drop pictures."""
    if rows == 0 and logits.numel() == 0:
        return logits
    if tuple(logits.shape) != (rows, classes):
        shape = " x ".join(str(n) for n in logits.shape) or "a scalar"
        raise ModelOutputError(
            f"the model answered {shape} for {rows} picture(s); expected {rows} x {classes} "
            "logits (one row per picture)"
        )
    bad = int((~torch.isfinite(logits)).any(dim=1).sum()) if logits.numel() else 0
    if bad:
        raise ModelOutputError(
            f"the model's output is NaN or infinite for {bad} of {rows} picture(s): "
            "the model file is broken (NaN or huge weights)"
        )
    return logits


def explaining(engine: Backend) -> ExplainingBackend:
    """The backend's Grad-CAM, or the one clear refusal when it has no gradients."""
    if not engine.can_explain:
        raise UserInputError(EXPLAIN_UNAVAILABLE)
    return cast(ExplainingBackend, engine)
