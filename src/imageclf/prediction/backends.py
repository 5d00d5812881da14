"""What runs a ``Predictor``'s forward pass: the ``Backend`` protocol, which the torch
model (``torch_backend``) and an exported ONNX graph (``onnx_backend``) both offer.

A backend turns prepared uint8 pictures into uncalibrated logits and says what else it
can do (``can_explain``). Everything before and after (decoding, resizing, the
temperature, top-k) is ``Predictor``'s, written once for both, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from ..models.bundle import BundleMetadata
from .gradcam import GradCAM


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
