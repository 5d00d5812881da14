"""What the training loop steps: ``Parts.build`` makes the model (as the run's ``Start``
says), its optimiser, grad scaler, lookahead, DDP wrapper and loss weights. Per-class
counts serve every run: the split described class by class, and ``--class-weights auto``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import Dataset, Split
from ..device import Runtime
from ..errors import UserInputError
from ..models import TrainingHooks, training_hooks
from ..prediction.inference import Normalizer, batch_for, loss_and_accuracy, predict_logits
from .config import TrainConfig
from .ema import WeightAverage
from .multilabel import describe_label_counts, is_multi_label, positive_weights
from .optim import Lookahead
from .runs import Checkpoint, RunState, load_best
from .start import Start
from .train_data import TrainData


@dataclass
class Parts:
    """What the loop steps: the model (and its DDP wrapper), optimiser, grad scaler,
    lookahead and the model's optional hooks."""

    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper: forward passes in training go here
    hooks: TrainingHooks
    normalizer: Normalizer
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lookahead: Lookahead | None
    loss_weight: torch.Tensor | None = None  # --class-weights auto (multi-label: pos_weight)
    multi_label: bool = False  # (N, C) multi-hot labels: sigmoids and binary cross-entropy
    ema: WeightAverage | None = None  # --ema: validation and the bundle use the average

    @classmethod
    def build(cls, cfg: TrainConfig, data: TrainData, rt: Runtime, start: Start) -> Parts:
        """Seeded once, so the same config builds the same model (and draws) every time."""
        torch.manual_seed(cfg.seed)
        classes = len(data.dataset.classes)
        model, norm = start.model(cfg, data)
        # From scratch: the training images' statistics; learned weights come with the
        # normalisation they were trained with, and the bundle records it.
        data.mean, data.std = norm["mean"], norm["std"]
        if cfg.low_res_epochs:
            _check_takes_size(model, cfg)
        normalizer = data.normalizer
        hooks = training_hooks(model)
        model = model.to(rt.device, memory_format=torch.channels_last)
        optimizer = start.optimizer(model, cfg, rt)
        multi = is_multi_label(data.y_train)
        if multi:  # per-label positive weights (multilabel.py)
            weight = positive_weights(data.y_train.numpy(), cfg.class_weights)
        else:
            weight = class_weights(data.y_train.numpy(), classes, cfg.class_weights)
        lookahead = Lookahead(model) if cfg.lookahead else None
        net: nn.Module = model
        if rt.dist.world > 1:
            ids = [rt.device.index] if rt.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        scaler = torch.amp.GradScaler("cuda", enabled=rt.amp_dtype == torch.float16)
        if weight is not None:
            weight = weight.to(rt.device)
        parts = cls(model, net, hooks, normalizer, optimizer, scaler, lookahead, weight, multi)
        parts.ema = WeightAverage(model, cfg.ema) if cfg.ema else None
        return parts

    def restore(self, checkpoint: Checkpoint, run_dir: Path) -> tuple[RunState, dict | None]:
        """Weights, optimiser and lookahead from ``last.pt``; the best weights from ``best.pt``."""
        self.model.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        if self.lookahead is not None:
            self.lookahead.load(checkpoint.lookahead)
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint.ema)
        return checkpoint.state, load_best(run_dir)

    def logits(self, cfg, x: torch.Tensor, rt: Runtime, tta: bool = False) -> torch.Tensor:
        """Raw logits through the one prediction path (``predict_logits``); batches no
        bigger than ``batch_for`` the image size (500 at 224 px held 7 GB of activations)."""
        batch = min(cfg.eval_batch_size, batch_for(x.shape[1]))
        return predict_logits(
            self.model, x, self.normalizer, batch_size=batch, tta=tta,
            device=rt.device, amp_dtype=rt.amp_dtype, multi_label=self.multi_label,
        )  # fmt: skip

    def score(self, cfg, x: torch.Tensor, y: torch.Tensor, rt: Runtime, tta: bool = False):
        """Loss and accuracy of ``x`` (with --ema: of the averaged weights)."""
        if self.ema is not None:
            with self.ema.applied():
                return loss_and_accuracy(self.logits(cfg, x, rt, tta), y)
        return loss_and_accuracy(self.logits(cfg, x, rt, tta), y)

    def kept_weights(self) -> dict[str, torch.Tensor]:
        """A copy of the weights an epoch would be kept with: the average under --ema."""
        if self.ema is not None:
            return self.ema.averaged_state()
        return copy.deepcopy(self.model.state_dict())


def _check_takes_size(model: nn.Module, cfg: TrainConfig) -> None:
    """Progressive resizing needs a model that takes any input size (global pooling before
    the head); a flattening head fails on its first small batch: say so before training."""
    side = cfg.image_size_at(0)
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, side, side))
    except RuntimeError:
        raise UserInputError(
            f"{cfg.architecture} takes only {cfg.image_size}x{cfg.image_size} inputs, so it "
            f"cannot train at {side} px first (low_res_scale {cfg.low_res_scale}); "
            "leave low_res_scale at 1"
        ) from None
    finally:
        model.train()


# ---------------------------------------------------------------- per-class counts
def describe_counts(dataset: Dataset, split: Split) -> str:
    """Per-class image counts of each split, and a hint when the classes are imbalanced."""
    if is_multi_label(dataset.labels):
        return describe_label_counts(dataset.labels, dataset.classes, split)
    lines = ["images per class (train / val / test):"]
    parts = [np.bincount(dataset.labels[idx], minlength=len(dataset.classes)) for idx in
             (split.train, split.val, split.test)]  # fmt: skip
    width = max(len(c) for c in dataset.classes)
    for i, name in enumerate(dataset.classes):
        lines.append(f"  {name:<{width}}  {parts[0][i]:>6} / {parts[1][i]:>5} / {parts[2][i]:>5}")
    train = parts[0]
    if train.min() > 0 and train.max() / train.min() >= 3:
        lines.append(
            f"  classes are imbalanced ({int(train.max())} vs {int(train.min())} training "
            "images): consider --class-weights auto"
        )
    return "\n".join(lines)


def class_weights(labels: np.ndarray, n_classes: int, mode: str | None) -> torch.Tensor | None:
    """``auto``: each class weighs n / (classes * n_c), so every class counts equally."""
    if not mode:
        return None
    if mode != "auto":
        raise UserInputError(f"--class-weights takes 'auto', got {mode!r}")
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = len(labels) / (n_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)
