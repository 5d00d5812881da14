"""One training step, shared by the epoch loop and the LR finder: the batch as training
sees it (TrivialAugment on the pixels, normalised, augmented, shrunk for progressive
resizing, erased, mixed by MixUp/CutMix into soft targets) and one optimiser step
(loss with label smoothing and class weights, the L2 hook, the grad scaler). The LR
finder's curve means something only if its steps are exactly training's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.augment import augment_batch, shrink
from ..data.augment_mix import as_targets, mix_batch, random_erasing
from ..data.trivial_augment import trivial_augment
from ..device import Runtime, autocast
from .config import TrainConfig
from .multilabel import bce_per_example
from .parts import Parts
from .train_data import TrainData


def training_batch(
    data: TrainData,
    parts: Parts,
    cfg: TrainConfig,
    rt: Runtime,
    idx,
    epoch: int,
    gen: torch.Generator,
    side: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pictures, labels) for the training images ``idx``, as epoch ``epoch`` sees them.
    With MixUp or CutMix the labels are soft targets (N x classes, rows summing to 1)."""
    pixels = data.x_train[idx]
    if cfg.trivial_augment:  # on the pixel scale (posterize, solarize), before normalising
        pixels = _trivially_augmented(pixels, rt.device, gen)
    x = parts.normalizer(pixels, rt.device)
    x = augment_batch(x, data.train_idx[idx], epoch, cfg.augment, gen, cfg.seed)
    if side != x.shape[-1]:
        x = shrink(x, side)
    x = random_erasing(x, cfg.erasing, gen)
    y = data.y_train[idx].to(rt.device)
    if cfg.mixup or cfg.cutmix:
        targets = as_targets(y, len(data.dataset.classes))
        x, y = mix_batch(x, targets, cfg.mixup, cfg.cutmix, gen)
    return x, y


def _trivially_augmented(pixels: torch.Tensor, device, gen: torch.Generator) -> torch.Tensor:
    """uint8 N x H x W x 3 -> TrivialAugment -> float N x H x W x 3 on the 0-255 scale (what
    the normaliser takes as it takes uint8)."""
    x = pixels.to(device).permute(0, 3, 1, 2).float() / 255
    return (trivial_augment(x, gen) * 255).permute(0, 2, 3, 1)


def optimizer_step(
    parts: Parts,
    cfg: TrainConfig,
    rt: Runtime,
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    world: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward and step; (logits, per-example loss) for the statistics."""
    with autocast(rt.device, rt.amp_dtype):
        logits = net(x)
        if parts.multi_label:  # one sigmoid per label (training/multilabel.py)
            loss_each = bce_per_example(logits, y, parts.loss_weight, cfg.label_smoothing)
        else:
            loss_each = F.cross_entropy(
                logits.float(), y, weight=parts.loss_weight,
                label_smoothing=cfg.label_smoothing, reduction="none",
            )  # fmt: skip
        # "sum" makes the learning rate per example; DDP averages gradients over ranks.
        loss = loss_each.sum() * world if cfg.loss_reduction == "sum" else loss_each.mean()
        penalty = parts.hooks.l2_penalty()
        if penalty is not None:
            loss = loss + penalty
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    return logits, loss_each
