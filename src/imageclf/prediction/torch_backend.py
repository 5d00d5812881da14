"""The PyTorch backend: a bundle's model with its normaliser, device and autocast dtype.

Logits come from ``inference.predict_logits``, the forward pass training's validation
uses too, so a number in a report is the number the server gives; Grad-CAM from
``gradcam.gradcam_batch``, which needs this backend's gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..device import resolve_device, resolve_precision
from ..errors import BundleError, ModelOutputError
from ..models.bundle import Bundle, build_model
from .backends import checked_logits, probe_pictures
from .gate import Gate, GateSpec
from .gradcam import GradCAM, gradcam_batch
from .inference import Normalizer, fold_batchnorm, predict_logits
from .traced import Traced


class TorchBackend:
    """A bundle's model, ready to run (an ``ExplainingBackend``)."""

    name = "pytorch"
    can_explain = True

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32") -> None:
        self.bundle = bundle  # the weights too: ``imageclf export --format fp16`` halves them
        self.metadata = bundle.metadata
        self.device = resolve_device(device)
        # The bundle's own architecture (Grad-CAM, inspection) and the same function with
        # BatchNorm folded into the convolutions, which every prediction runs (as a
        # frozen trace on the CPU: ``traced``).
        self.model = build_model(bundle).to(self.device, memory_format=torch.channels_last)
        self.inference_model = Traced(fold_batchnorm(self.model), self.metadata.input_size)
        self.amp_dtype = resolve_precision(self.device, precision)
        # The ImageNet gate's second opinion on photos, when the bundle carries one (fp32).
        self.gate = None
        if bundle.gate:
            spec = GateSpec.from_metadata(bundle.metadata["gate"])
            self.gate = Gate(spec, bundle.gate, self.metadata.classes)
        self.normalizer = Normalizer(self.metadata.mean, self.metadata.std)
        try:  # finite weights can still overflow: one pass on two blank pictures
            self.logits(probe_pictures(self.metadata.input_size))
        except ModelOutputError as exc:
            raise BundleError(f"model {self.metadata.name}: {exc}") from None

    def logits(self, batch_u8: np.ndarray, *, tta: bool = False) -> torch.Tensor:
        """Uncalibrated logits (N, classes) for prepared uint8 NHWC pictures, checked
        (``backends.checked_logits``: one finite row per picture)."""
        logits = predict_logits(
            self.inference_model,
            torch.from_numpy(np.ascontiguousarray(batch_u8)),
            self.normalizer,
            tta=tta,
            device=self.device,
            amp_dtype=self.amp_dtype,
            multi_label=self.metadata.multi_label,
        )
        return checked_logits(logits, len(batch_u8), len(self.metadata.classes))

    def gradcam(
        self,
        batch_u8: np.ndarray,
        class_indices: Sequence[int] | np.ndarray | None = None,
        *,
        layer: str | None = None,
        temperature: float = 1.0,
    ) -> GradCAM:
        """Grad-CAM of prepared uint8 pictures; ``temperature`` scales its probabilities."""
        return gradcam_batch(
            self.model,
            self.normalizer,
            batch_u8,
            class_indices,
            layer=layer,
            device=self.device,
            temperature=temperature,
        )
