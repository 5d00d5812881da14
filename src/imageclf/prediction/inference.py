"""Batched forward passes with optional test-time augmentation: the one prediction
path shared by training-time evaluation, ``Predictor`` and the reports; and the
``Normalizer`` that turns uint8 pictures into the model's input."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..device import autocast


class Normalizer:
    """uint8 NHWC -> float NCHW (channels_last memory), standardised per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, 3, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, 3, 1, 1)

    def __call__(self, batch: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        # An NHWC tensor permuted to NCHW *is* channels_last in memory: no copy needed.
        x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        return x * self.scale.to(x.device) - self.shift.to(x.device)


TTA_VIEWS = 6  # forward passes per picture with TTA (tta_views below)


def tta_views(x: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
    """(weight, view) of an N x C x H x W batch: mirror + 1-pixel translations
    (airbench's TTA); the original pair carries half the weight, the two diagonal shifts
    a quarter each. Reflect padding only repeats pixels, so whole-number pixel values stay
    whole (the ONNX backend shifts uint8 pictures with it)."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[-2:]
    shifted = [padded[..., 0:h, 0:w], padded[..., 2 : h + 2, 2 : w + 2]]
    views = [(0.25, x), (0.25, x.flip(-1))]
    for s in shifted:
        views += [(0.125, s), (0.125, s.flip(-1))]
    return views


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) for inference, each BatchNorm2d that directly
    follows a Conv2d in an ``nn.Sequential`` folded into that convolution's weights and
    bias (computed in fp32). The same function in fp32; one layer and one rounding
    fewer per convolution: EfficientNet-Lite0 at 128 px scores 1.3x (bf16) to 1.6x
    (fp32) faster. Batch statistics never change in eval mode, so nothing is lost."""
    folded = copy.deepcopy(model).eval()
    for sequence in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequence) - 1):
            conv, norm = sequence[i], sequence[i + 1]
            if (
                type(norm) is nn.BatchNorm2d
                and isinstance(conv, nn.Conv2d)
                and norm.running_mean is not None
                and norm.num_features == conv.out_channels
            ):
                sequence[i] = fuse_conv_bn_eval(conv, norm)
                sequence[i + 1] = nn.Identity()
    return folded


# Images per call when a whole split is scored: one progress step. ``evaluate`` and the end
# of a training run chunk alike, so their batches, and so their numbers, are the same.
SCORE_CHUNK = 2000


def score_in_chunks(
    score: Callable[..., np.ndarray],
    images_u8: np.ndarray | torch.Tensor,
    classes: int,
    tta: bool,
    bar=None,
) -> np.ndarray:
    """``score(chunk, tta=tta)`` over ``SCORE_CHUNK``-image chunks, concatenated: (N, classes),
    empty when there are no images. ``bar`` counts forward views (a TTA image is
    ``TTA_VIEWS``), so one bar can follow several models and splits."""
    parts = []
    for start in range(0, len(images_u8), SCORE_CHUNK):
        chunk = images_u8[start : start + SCORE_CHUNK]
        parts.append(score(chunk, tta=tta))
        if bar is not None:
            bar.update(len(chunk) * (TTA_VIEWS if tta else 1))
    return np.concatenate(parts) if parts else np.zeros((0, classes))


# Pixels per forward batch. Activations beyond a few hundred MB cost more in page faults
# than they gain: EfficientNet-Lite0 at 96 px in bf16 on 2 AVX-512 cores ran ~950 img/s
# at batch 64-128 and 491 at 500 (system time above user time); 32 px nets keep 500.
BATCH_PIXELS = 128 * 96 * 96


def batch_for(side: int) -> int:
    """Images per forward pass for ``side`` x ``side`` inputs: 500 at 32 px, 128 at 96."""
    return max(16, min(500, BATCH_PIXELS // (side * side)))


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images_u8: torch.Tensor,
    normalizer: Normalizer,
    *,
    batch_size: int | None = None,
    tta: bool = False,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    multi_label: bool = False,
) -> torch.Tensor:
    """uint8 NHWC images -> float32 logits (N, classes); TTA averages log-probabilities
    (``multi_label``: the logits themselves, since each label is its own sigmoid and a
    log-softmax over labels would tie them together)."""
    if model.training:  # eval() walks every module: measurable on a one-image request
        model.eval()
    device = torch.device(device)
    batch_size = batch_size or batch_for(images_u8.shape[1] if images_u8.ndim == 4 else 32)
    outputs = []
    for start in range(0, len(images_u8), batch_size):
        x = normalizer(images_u8[start : start + batch_size], device)
        with autocast(device, amp_dtype):
            if tta:
                view = (lambda z: z) if multi_label else (lambda z: F.log_softmax(z, -1))
                out = sum(wt * view(model(v).float()) for wt, v in tta_views(x))
            else:
                out = model(x).float()
        outputs.append(out.float().cpu())
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Cross-entropy and accuracy; for (N, C) multi-hot labels, binary cross-entropy (summed
    over labels, averaged over pictures), subset accuracy at logit 0 (every label right)
    and ``map``, the mean average precision over labels with a positive picture."""
    if len(labels) == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    if labels.ndim == 2:
        targets = labels.float()
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
        exact = ((logits > 0) == (targets > 0.5)).all(1).double().mean().item()
        return {
            "loss": loss.sum(1).mean().item(),
            "accuracy": exact,
            "map": mean_average_precision(logits.float().numpy(), labels.numpy()),
        }
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).double().mean().item()
    return {"loss": loss, "accuracy": accuracy}


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over labels of scikit-learn's average precision (area under the label's
    precision-recall curve); labels without a positive picture have none and are left out
    (NaN when no label has one). ``scores``: any monotone function of the probabilities."""
    from sklearn.metrics import average_precision_score

    targets = (targets > 0.5) if targets.dtype.kind == "f" else targets.astype(bool)
    present = targets.any(0)
    if not present.any():
        return float("nan")
    ap = average_precision_score(targets[:, present], scores[:, present], average=None)
    return float(ap.mean())
