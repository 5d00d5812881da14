"""What a training run is built from: the data as tensors and the parts the loop steps.

``TrainData.load`` decodes and splits the dataset once and fits the normaliser on the
training images; ``Parts.build`` makes the model (from scratch, or the starting point
of a transfer run), its optimiser, grad scaler, lookahead and DDP wrapper. The driver
in ``training.py`` builds both once and hands them to every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data import Dataset, Split, load_dataset, make_split
from ..data.loader import channel_stats
from ..device import Runtime
from ..errors import UserInputError
from ..models import TrainingHooks, build, training_hooks
from ..prediction.inference import Normalizer, evaluate_logits, predict_logits
from . import finetune
from .config import TrainConfig
from .optim import Lookahead, make_optimizer
from .runs import Checkpoint, RunState, load_best


@dataclass
class TrainData:
    """The dataset as uint8 tensors, sliced by the split, plus the normaliser fitted
    on the training images."""

    dataset: Dataset
    split: Split
    train_idx: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: list[float]
    std: list[float]

    @classmethod
    def load(cls, cfg: TrainConfig, progress: bool) -> TrainData:
        dataset = load_dataset(cfg.data, image_size=cfg.image_size, progress=progress)
        split = make_split(dataset, cfg.split, cfg.seed, cfg.val_size, cfg.subset)
        images = torch.from_numpy(dataset.images)
        labels = torch.from_numpy(dataset.labels)
        train_idx = torch.from_numpy(split.train)
        val_idx = torch.from_numpy(split.val)
        x_train = images[train_idx]
        mean, std = channel_stats(x_train.numpy())
        return cls(
            dataset, split, train_idx, x_train, labels[train_idx],
            images[val_idx], labels[val_idx], mean, std,
        )  # fmt: skip

    @property
    def normalizer(self) -> Normalizer:
        return Normalizer(self.mean, self.std)

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.split.test)
        labels = torch.from_numpy(self.dataset.labels)
        return torch.from_numpy(self.dataset.images)[idx], labels[idx]

    def steps_per_epoch(self, cfg: TrainConfig) -> int:
        return math.ceil(len(self.x_train) / cfg.batch_size)


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
    loss_weight: torch.Tensor | None = None  # --class-weights auto

    @classmethod
    def build(cls, cfg: TrainConfig, data: TrainData, rt: Runtime) -> Parts:
        torch.manual_seed(cfg.seed)
        classes = len(data.dataset.classes)
        transfer = finetune.is_transfer(cfg)
        if transfer:
            # Learned weights come with the normalisation they were trained with.
            model, norm = finetune.start_model(cfg, data.dataset.classes)
            data.mean, data.std = norm["mean"], norm["std"]
        else:
            model = build(cfg.architecture, classes, cfg.image_size, **cfg.arch_kwargs)
        if cfg.low_res_epochs:
            _check_takes_size(model, cfg)
        normalizer = data.normalizer
        hooks = training_hooks(model)
        if not transfer:
            # Whitening from the first 5,000 training images: a deterministic, cheap estimate.
            hooks.init_whitening(normalizer(data.x_train[:5000]))
        model = model.to(rt.device, memory_format=torch.channels_last)
        if transfer:
            optimizer = finetune.make_optimizer(model, cfg)
        else:
            # Muon's iteration runs in bf16 where training does (about half the fp32 time).
            bf16 = rt.amp_dtype == torch.bfloat16
            optimizer = make_optimizer(model, cfg, torch.bfloat16 if bf16 else torch.float32)
        weight = finetune.class_weights(data.y_train.numpy(), classes, cfg.class_weights)
        lookahead = Lookahead(model) if cfg.lookahead else None
        net: nn.Module = model
        if rt.dist.world > 1:
            ids = [rt.device.index] if rt.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        scaler = torch.amp.GradScaler("cuda", enabled=rt.amp_dtype == torch.float16)
        if weight is not None:
            weight = weight.to(rt.device)
        return cls(model, net, hooks, normalizer, optimizer, scaler, lookahead, weight)

    def restore(self, checkpoint: Checkpoint, run_dir: Path) -> tuple[RunState, dict | None]:
        """Weights, optimiser and lookahead from ``last.pt``; the best weights from ``best.pt``."""
        self.model.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        if self.lookahead is not None:
            self.lookahead.load(checkpoint.lookahead)
        return checkpoint.state, load_best(run_dir)

    def logits(self, cfg, x: torch.Tensor, rt: Runtime, tta: bool = False) -> torch.Tensor:
        """Raw logits through the one prediction path (``predict_logits``)."""
        return predict_logits(
            self.model, x, self.normalizer, batch_size=cfg.eval_batch_size, tta=tta,
            device=rt.device, amp_dtype=rt.amp_dtype,
        )  # fmt: skip

    def evaluate(self, cfg, x: torch.Tensor, y: torch.Tensor, rt: Runtime, tta: bool = False):
        """Loss and accuracy of ``x``."""
        return evaluate_logits(self.logits(cfg, x, rt, tta), y)


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
