"""One training step, shared by the epoch loop and the LR finder: the batch as training
sees it (normalised, augmented, shrunk for progressive resizing) and one optimiser step
(loss with label smoothing and class weights, the L2 hook, the grad scaler). The LR
finder's curve means something only if its steps are exactly training's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.augment import augment_batch, shrink
from ..device import Runtime, autocast
from .config import TrainConfig
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
    """(pictures, labels) for the training images ``idx``, as epoch ``epoch`` sees them."""
    x = parts.normalizer(data.x_train[idx], rt.device)
    x = augment_batch(x, data.train_idx[idx], epoch, cfg.augment, gen, cfg.seed)
    if side != x.shape[-1]:
        x = shrink(x, side)
    return x, data.y_train[idx].to(rt.device)


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
