"""Grad-CAM: which part of the picture made the model choose a class.

Selvaraju et al. (arXiv 1610.02391): weight each channel of a convolutional
feature map by the mean gradient of the class score with respect to it, sum,
keep the positive part. The last ``Conv2d`` the forward pass runs is used by
default (the most semantic map that still has a spatial layout); any module
with a 4-D output can be named instead.

Callers go through ``Predictor``: ``predictor.explain(picture)`` (one picture,
an ``Explanation`` with its overlay: the web app) and ``predictor.gradcam(batch)``
(a ``GradCAM`` for a uint8 batch: ``imageclf predict --explain``, the reports,
``ensemble_gradcam``). This module holds the algorithm and the drawing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import UserInputError
from .inference import Normalizer

DEFAULT_SIZE = 256
# The overlay blends the picture with a colour map; warm = evidence for the class.
# The colour's opacity grows with the heat, so cold regions keep the picture visible.
COLORMAP = "jet"
ALPHA = (0.15, 0.6)  # opacity of the colour map at heat 0 and at heat 1


@dataclass
class GradCAM:
    """Grad-CAM of a batch: one heatmap per image for the class it explains."""

    heatmaps: np.ndarray  # (N, H, W) in [0, 1] at the input resolution
    probabilities: np.ndarray  # (N, C): the model's softmax on the same forward pass
    class_indices: np.ndarray  # (N,): the class each heatmap explains
    layer: str  # the feature map's module name


@dataclass
class Explanation:
    """One image's Grad-CAM: ``heatmap`` is (S, S) in [0, 1] at the model's input size."""

    heatmap: np.ndarray
    overlay: Image.Image
    class_index: int
    label: str
    probability: float
    layer: str


def _check_layer(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise UserInputError(
            f"the model has no layer named {layer!r}; its conv layers are: {', '.join(convs)}"
        )
    return modules[layer]


def gradcam_batch(
    model: nn.Module,
    normalizer: Normalizer,
    images_u8: np.ndarray | torch.Tensor,
    class_indices: Sequence[int] | np.ndarray | None = None,
    *,
    layer: str | None = None,
    device: torch.device | str = "cpu",
    temperature: float = 1.0,
) -> GradCAM:
    """Grad-CAM for a batch of uint8 NHWC images (``Predictor.gradcam`` calls this).

    ``class_indices=None`` explains each image's predicted class. One forward and one
    backward serve the whole batch: in eval mode the samples do not interact, so the
    gradient of the summed scores is each image's own gradient.
    """
    if layer is not None:
        watched = {layer: _check_layer(model, layer)}
    else:
        watched = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        if not watched:
            raise UserInputError("Grad-CAM needs a model with at least one Conv2d layer")
    batch = torch.as_tensor(np.ascontiguousarray(images_u8))
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise UserInputError(
            f"expected uint8 images of shape (N, H, W, 3), got {tuple(batch.shape)}"
        )
    calls: list[tuple[str, torch.Tensor]] = []
    owner = threading.get_ident()

    def hook(name: str):
        def record(_module, _inputs, output):
            # Other threads (a web server) may run the same model: record only our pass.
            if threading.get_ident() == owner:
                calls.append((name, output))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in watched.items()]
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = normalizer(batch, device).clone().requires_grad_(True)
            logits = model(x).float()
            # Without a named layer: the last Conv2d the forward pass ran.
            name, activation = calls[-1] if calls else (layer, None)
            if not isinstance(activation, torch.Tensor) or activation.ndim != 4:
                raise UserInputError(
                    f"layer {name!r} does not produce a spatial (N, C, H, W) feature map"
                )
            probs = torch.softmax(logits.detach() / temperature, dim=1)
            if class_indices is None:
                targets = probs.argmax(1)
            else:
                targets = torch.as_tensor(np.asarray(class_indices), dtype=torch.long).reshape(-1)
                if len(targets) != len(batch):
                    raise UserInputError("give one class index per image")
                bad = (targets < 0) | (targets >= logits.shape[1])
                if bool(bad.any()):
                    raise UserInputError(
                        f"class index {int(targets[bad][0])} is out of range "
                        f"(the model has {logits.shape[1]} classes)"
                    )
            targets = targets.to(logits.device)
            score = logits.gather(1, targets[:, None]).sum()
            (grads,) = torch.autograd.grad(score, activation, allow_unused=True)
            if grads is None:
                raise UserInputError(f"layer {name!r} does not feed the model's output")
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activation.detach()).sum(1, keepdim=True)).float()
        cam = F.interpolate(cam, size=tuple(batch.shape[1:3]), mode="bilinear", align_corners=False)
        cam = cam[:, 0].clamp_min(0)
        peak = cam.amax(dim=(1, 2), keepdim=True)
        cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    finally:
        for handle in handles:
            handle.remove()
    return GradCAM(cam.cpu().numpy(), probs.cpu().numpy(), targets.cpu().numpy(), name)


def overlay(
    image: Image.Image | np.ndarray,
    heatmap: np.ndarray,
    size: int = DEFAULT_SIZE,
    *,
    alpha: tuple[float, float] = ALPHA,
) -> Image.Image:
    """The picture at ``size`` x ``size`` with the heatmap blended on top as a colour map.

    Both are upsampled smoothly (bicubic picture, bilinear map): a 32x32 input becomes
    something a person can look at.
    """
    from matplotlib import colormaps

    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    base = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    heat = F.interpolate(heat, size=(size, size), mode="bilinear", align_corners=False)
    heat = heat[0, 0].clamp(0, 1).numpy()
    colored = colormaps[COLORMAP](heat)[..., :3]
    opacity = (alpha[0] + (alpha[1] - alpha[0]) * heat)[..., None]
    blended = (1 - opacity) * (np.asarray(base, np.float32) / 255.0) + opacity * colored
    return Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8))


def ensemble_gradcam(predictors, images_u8: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    """Grad-CAM maps for the given classes, averaged over ensemble members (``Predictor``s)."""
    maps = [p.gradcam(images_u8, class_indices).heatmaps for p in predictors]
    mean = np.mean(maps, axis=0)
    peak = mean.max(axis=(1, 2), keepdims=True)
    return np.divide(mean, peak, out=np.zeros_like(mean), where=peak > 0)
