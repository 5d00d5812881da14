"""The learning-rate range test (Smith 2015; fastai's ``lr_find``): train for ``steps``
batches while the learning rate rises exponentially from ``start_lr`` to ``end_lr``,
record the loss, stop once it diverges, and suggest a rate from the curve.

It runs on the run's own parts: the model, optimiser, loss, data and augmentation a
``train`` with the same options would build (``Start``, ``TrainData``, ``Parts``), so
the curve is the one training will walk. The swept rate is the config's ``lr``; every
parameter group keeps its ratio to it (discriminative rates, Muon's filters), exactly
as a schedule scales them. Nothing of the sweep stays: weights, BatchNorm statistics,
optimiser state, ``requires_grad`` flags and the RNG are put back afterwards.

The suggestion (``RULE``): where the smoothed loss falls fastest per decade of rate,
before its minimum (fastai's "steepest"); a tenth of the minimum's rate (fastai's
first rule) is reported beside it. Checked against short grids of real runs on two
small data sets (docs/benchmarks.md, "LR finder"), the steepest point was within 0.1
points of the grid's best on one and the best on the other; the minimum/10 rule was
1.5 and 9.5 points below the best, too low for these short runs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.loader import batch_indices
from ..device import Runtime, setup_runtime
from ..errors import UserInputError
from . import finetune
from .adapt import adapt_to_data
from .config import TrainConfig
from .optim import set_learning_rate
from .parts import Parts
from .start import start_for
from .step import optimizer_step, training_batch
from .train_data import TrainData

RULE = "steepest descent of the smoothed loss, before its minimum"
SMOOTHING = 0.98  # exponential moving average of the loss, debiased (fastai's beta)
DIVERGED = 4.0  # stop once the loss exceeds this many times the smoothed minimum


@dataclass
class LRFind:
    """The sweep's curve and what it suggests."""

    lrs: list[float]
    losses: list[float]  # each step's mean loss
    smoothed: list[float]
    suggestion: float | None  # RULE's rate; None when the loss never fell
    steepest: float | None  # where the smoothed loss fell fastest (per decade)
    minimum: float | None  # the rate at the smoothed minimum
    stopped: str  # why it ended
    recipe_lr: float  # the config's lr, for comparison
    rule: str = RULE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, ...]:
    """(suggestion, steepest, minimum) from a smoothed curve: the suggestion is the
    steepest point, or a tenth of the minimum's rate where the curve has no descent
    before it; all None where the loss never fell below its start."""
    if len(smoothed) < 3:
        return None, None, None
    loss = np.asarray(smoothed)
    low = int(np.argmin(loss))
    if low == 0 or loss[low] >= loss[0]:
        return None, None, None
    minimum = lrs[low]
    skip = min(low, max(1, len(lrs) // 10))  # the first points carry the EMA's start
    if skip >= low:
        return max(lrs[0], minimum / 10), None, minimum
    slope = np.gradient(loss[: low + 1], np.log10(lrs[: low + 1]))
    steepest = lrs[skip + int(np.argmin(slope[skip:low]))]
    return steepest, steepest, minimum


class _Saved:
    """Everything a sweep changes, taken before and put back after (its only trace)."""

    def __init__(self, parts: Parts) -> None:
        self.model = copy.deepcopy(parts.model.state_dict())
        self.optimizer = copy.deepcopy(parts.optimizer.state_dict())
        self.grads = [p.requires_grad for p in parts.model.parameters()]
        self.training = parts.model.training
        self.rng = torch.get_rng_state()

    def restore(self, parts: Parts) -> None:
        parts.model.load_state_dict(self.model)
        parts.optimizer.load_state_dict(self.optimizer)
        for p, flag in zip(parts.model.parameters(), self.grads, strict=True):
            p.requires_grad_(flag)
            p.grad = None
        parts.model.train(self.training)
        torch.set_rng_state(self.rng)


def _batches(data: TrainData, cfg: TrainConfig, gen: torch.Generator):
    """Shuffled training batches, pass after pass, as many as the sweep asks for."""
    while True:
        yield from batch_indices(len(data.x_train), cfg.batch_size, shuffle=True, gen=gen)


def sweep(
    parts: Parts,
    data: TrainData,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    progress: bool = False,
) -> LRFind:
    """The range test on built parts; they are as they were when it returns."""
    if not 0 < start_lr < end_lr:
        raise UserInputError(f"--start-lr {start_lr} must be above 0 and below --end-lr {end_lr}")
    if steps < 5:
        raise UserInputError(f"--steps {steps}: a curve needs at least 5 steps")
    saved = _Saved(parts)
    try:
        return _walk(parts, data, cfg, rt, np.geomspace(start_lr, end_lr, steps), progress)
    finally:
        saved.restore(parts)


def _walk(parts: Parts, data: TrainData, cfg: TrainConfig, rt: Runtime, schedule, progress):
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003)
    torch.manual_seed(cfg.seed * 7_919)
    bias = parts.hooks.whitening_bias()
    if bias is not None:
        bias.requires_grad_(cfg.whiten_bias_epochs > 0)  # as the first epoch has it
    parts.model.train()
    side = cfg.image_size_at(0)
    lrs, losses, smoothed, avg = [], [], [], 0.0
    stopped = f"ran all {len(schedule)} steps"
    batches = _batches(data, cfg, gen)
    bar = tqdm(schedule, desc="lr sweep", unit="step", leave=False, disable=not progress)
    for k, lr in enumerate(bar):
        idx = next(batches)
        x, y = training_batch(data, parts, cfg, rt, idx, 0, gen, side)
        set_learning_rate(parts.optimizer, cfg, float(lr) / cfg.lr)
        _, each = optimizer_step(parts, cfg, rt, parts.model, x, y)
        value = float(each.detach().mean())
        if not math.isfinite(value):
            stopped = f"diverged at step {k + 1} (loss not finite)"
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * value
        lrs.append(float(lr))
        losses.append(value)
        smoothed.append(avg / (1 - SMOOTHING ** (k + 1)))
        if k >= 5 and max(value, smoothed[-1]) > DIVERGED * min(smoothed):
            stopped = f"diverged at step {k + 1} (loss {DIVERGED:g}x its minimum)"
            break
    bar.close()
    suggestion, steepest, minimum = suggest(lrs, smoothed)
    return LRFind(lrs, losses, smoothed, suggestion, steepest, minimum, stopped, cfg.lr)


def lr_find(
    cfg: TrainConfig,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    progress: bool = True,
) -> LRFind:
    """Build what ``train(cfg)`` would (data adapted to its size, as a fresh run is) and
    sweep it; nothing is written and the parts are thrown away."""
    start = start_for(cfg)
    cfg = start.prepare(cfg)
    rt = setup_runtime(cfg.device, cfg.precision, cfg.threads, cfg.depthwise)
    if rt.dist.world > 1:
        raise UserInputError("lr-find runs in one process; run it without torchrun")
    if cfg.freeze_backbone:
        raise UserInputError("--freeze-backbone fits the head by L-BFGS: no learning rate to find")
    data = TrainData.load(cfg, progress)
    cfg, _ = adapt_to_data(cfg, len(data.x_train), start.min_steps)
    parts = Parts.build(cfg, data, rt, start)
    if start.fits_head_first:  # fine-tuning starts from the fitted head, so does the sweep
        finetune.fit_head(
            parts.model, parts.normalizer, data.x_train, data.y_train, data.x_val, data.y_val,
            len(data.dataset.classes), weight=parts.loss_weight, device=rt.device,
            amp_dtype=rt.amp_dtype, progress=progress,
        )  # fmt: skip
    return sweep(parts, data, cfg, rt, start_lr=start_lr, end_lr=end_lr, steps=steps,
                 progress=progress)  # fmt: skip
